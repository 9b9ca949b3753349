// The CUDA built-ins that snnzoo/cuda/neuron_kernels.cu uses, for the host: the kernels' device code compiled by
// g++ and run by launch.cpp, block by block, with every thread of a block a fiber (ucontext) of one OS thread.
//
// - threadIdx / blockIdx / blockDim / gridDim: the running fiber's indices; __shared__ memory is one static per
//   variable (one block runs at a time).
// - __syncthreads(): a real barrier; the fibers run round-robin until every live thread of the block arrives.
// - __shfl_down_sync: a real exchange through the warp's 32 lanes (two warp barriers). A shuffle whose mask is not
//   the full warp, or in a warp with fewer than 32 threads, is a fault (undefined on the GPU).
// - uint4: a 16-byte vector whose loads and stores fault unless both addresses are 16-byte aligned (as on the GPU).
// - __float_as_uint / __uint_as_float and the half conversions (IEEE binary16 through _Float16, round to nearest
//   even, like cvt.rn.f16.f32).
// A fault is recorded (the first one wins) and reported by the launch, like a CUDA error after a kernel.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>
#include <string>
#include <ucontext.h>
#include <vector>

#define __CUDA_ARCH__ 800
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __shared__ static

struct dim3 { unsigned x = 1, y = 1, z = 1; };

namespace emu {

struct Fiber {
    ucontext_t context;
    std::vector<char> stack;
    unsigned thread;
    bool done;
};

struct Warp {
    unsigned char slot[32][8];
    unsigned arrived = 0;
    unsigned long long generation = 0;
};

inline dim3 grid_dim, block_dim, block_idx;
inline std::vector<Fiber> fibers;
inline ucontext_t scheduler;
inline unsigned current = 0, live = 0, arrived = 0;
inline unsigned long long generation = 0;
inline Warp warps[32];
inline std::string fault;

inline void report(const std::string& what) {
    if (fault.empty()) fault = what;
}

inline dim3 thread_idx() { return dim3{fibers[current].thread, 0, 0}; }

inline void yield() { swapcontext(&fibers[current].context, &scheduler); }

inline void release_if_all_arrived() {
    if (arrived > 0 && arrived == live) {
        arrived = 0;
        ++generation;
    }
}

inline void sync_block() {
    const unsigned long long mine = generation;
    ++arrived;
    release_if_all_arrived();
    while (generation == mine) yield();
}

inline void sync_warp(Warp& w) {
    const unsigned long long mine = w.generation;
    if (++w.arrived == 32) {
        w.arrived = 0;
        ++w.generation;
    }
    while (w.generation == mine) yield();
}

template <class T> T shfl_down(unsigned mask, T value, unsigned offset) {
    static_assert(sizeof(T) <= 8, "shuffles move at most 8 bytes");
    const unsigned thread = fibers[current].thread, lane = thread & 31u, first = thread - lane;
    if (mask != 0xffffffffu || first + 32 > block_dim.x) {
        report("__shfl_down_sync over a partial warp (block of " + std::to_string(block_dim.x) + " threads, mask " +
               std::to_string(mask) + "): undefined on the GPU");
        return value;
    }
    Warp& w = warps[thread >> 5];
    std::memcpy(w.slot[lane], &value, sizeof(T));
    sync_warp(w);
    T out = value;
    if (lane + offset < 32) std::memcpy(&out, w.slot[lane + offset], sizeof(T));
    sync_warp(w);
    return out;
}

inline bool check_vector(const void* p, const char* what) {
    const auto address = reinterpret_cast<std::uintptr_t>(p);
    if (address % 16 == 0) return true;
    report(std::string("misaligned 16-byte vector ") + what + " at address " + std::to_string(address));
    return false;
}

}  // namespace emu

#define threadIdx (::emu::thread_idx())
#define blockIdx (::emu::block_idx)
#define blockDim (::emu::block_dim)
#define gridDim (::emu::grid_dim)

inline void __syncthreads() { emu::sync_block(); }

template <class T> T __shfl_down_sync(unsigned mask, T value, unsigned offset) {
    return emu::shfl_down(mask, value, offset);
}

struct alignas(16) uint4 {
    unsigned x, y, z, w;
    uint4() = default;
    uint4(const uint4&) = default;
    uint4& operator=(const uint4& other) {   // every vector load and store of the kernels is such an assignment
        const bool aligned = emu::check_vector(&other, "load") & emu::check_vector(this, "store");
        if (aligned) x = other.x, y = other.y, z = other.z, w = other.w;   // (a faulting access moves nothing)
        return *this;
    }
};

inline unsigned __float_as_uint(float f) {
    unsigned u;
    std::memcpy(&u, &f, sizeof(u));
    return u;
}

inline float __uint_as_float(unsigned u) {
    float f;
    std::memcpy(&f, &u, sizeof(f));
    return f;
}

inline float snn_half_to_float(unsigned short b) {
    _Float16 h;
    std::memcpy(&h, &b, sizeof(h));
    return static_cast<float>(h);
}

inline unsigned short snn_float_to_half(float f) {
    const _Float16 h = static_cast<_Float16>(f);
    unsigned short b;
    std::memcpy(&b, &h, sizeof(b));
    return b;
}
