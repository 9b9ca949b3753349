// Host launcher of the real kernels of snnzoo/cuda/neuron_kernels.cu (compiled through shim.h): runs a grid of
// blocks one after the other, the threads of a block as cooperating fibers, with the grid, block and arguments the
// caller gives (tests/cuda_emulator.py passes exactly those of snnzoo/cuda/ops.py).
// Build (tests/cuda_emulator.py): g++ -std=c++20 -O1 -ffp-contract=off -shared -fPIC -I snnzoo/cuda
//     -DSNN_KERNELS='"/path/to/neuron_kernels.cu"' launch.cpp -o libsnn_emu.so
// Entry points return 0, or -1 with emu_error() saying what faulted. ``blocks`` (nblocks > 0) runs only those
// blocks of the grid (a huge grid sampled); nblocks = 0 runs them all.
#include "shim.h"
#include SNN_KERNELS   // neuron_kernels.cu, or a replacement given by the build

#include <functional>

namespace {

constexpr size_t STACK_BYTES = 64 * 1024;
std::function<void()> body;

void fiber_main() {
    body();
    emu::fibers[emu::current].done = true;
    --emu::live;
    emu::release_if_all_arrived();   // an exited thread no longer holds a barrier back
}

void run_block(unsigned block) {
    emu::block_idx = dim3{block, 0, 0};
    emu::live = emu::block_dim.x;
    emu::arrived = 0;
    for (emu::Warp& w : emu::warps) w.arrived = 0;
    for (unsigned t = 0; t < emu::block_dim.x; ++t) {
        emu::Fiber& f = emu::fibers[t];
        f.thread = t;
        f.done = false;
        getcontext(&f.context);
        f.context.uc_stack.ss_sp = f.stack.data();
        f.context.uc_stack.ss_size = f.stack.size();
        f.context.uc_link = &emu::scheduler;
        makecontext(&f.context, fiber_main, 0);
    }
    for (bool running = true; running;) {
        running = false;
        for (unsigned t = 0; t < emu::block_dim.x; ++t) {
            if (emu::fibers[t].done) continue;
            emu::current = t;
            swapcontext(&emu::scheduler, &emu::fibers[t].context);
            running = running || !emu::fibers[t].done;
        }
    }
}

int launch(unsigned grid, unsigned block, const long long* blocks, long long nblocks, std::function<void()> kernel) {
    emu::fault.clear();
    if (grid == 0 || block == 0 || block > 1024) {
        emu::report("invalid launch configuration: grid " + std::to_string(grid) + ", block " + std::to_string(block));
        return -1;
    }
    emu::grid_dim = dim3{grid, 1, 1};
    emu::block_dim = dim3{block, 1, 1};
    emu::fibers.resize(block);
    for (emu::Fiber& f : emu::fibers) f.stack.resize(STACK_BYTES);
    body = std::move(kernel);
    for (long long i = 0; i < (nblocks > 0 ? nblocks : grid); ++i) {
        const long long b = nblocks > 0 ? blocks[i] : i;
        if (b < 0 || b >= grid) {
            emu::report("block " + std::to_string(b) + " outside the grid of " + std::to_string(grid));
            break;
        }
        run_block(static_cast<unsigned>(b));
    }
    return emu::fault.empty() ? 0 : -1;
}

// Calls f.template operator()<S, CHARGE, HARD>() for the runtime (dtype, charge, hard): 0 float32, 1 float16,
// 2 bfloat16.
template <class F> int dispatch(int dtype, int charge, int hard, F f) {
    auto typed = [&]<class S>() {
        switch (charge * 2 + (hard ? 1 : 0)) {
            case 0: return f.template operator()<S, snn::CHARGE_IF, false>();
            case 1: return f.template operator()<S, snn::CHARGE_IF, true>();
            case 2: return f.template operator()<S, snn::CHARGE_LIF, false>();
            case 3: return f.template operator()<S, snn::CHARGE_LIF, true>();
            case 4: return f.template operator()<S, snn::CHARGE_PLIF, false>();
            case 5: return f.template operator()<S, snn::CHARGE_PLIF, true>();
        }
        emu::report("unknown charge " + std::to_string(charge));
        return -1;
    };
    switch (dtype) {
        case 0: return typed.template operator()<float>();
        case 1: return typed.template operator()<snn::half16>();
        case 2: return typed.template operator()<snn::bfloat16>();
    }
    emu::report("unknown dtype code " + std::to_string(dtype));
    return -1;
}

}  // namespace

extern "C" {

const char* emu_error() { return emu::fault.c_str(); }

int emu_neuron_fwd(int dtype, int charge, int hard, unsigned grid, unsigned block, const long long* blocks,
                   long long nblocks, const void* x, const float* v0, const float* k, void* spikes, void* h,
                   float* v_last, long long n, int steps, float tau, float v_threshold, float v_reset, int flags) {
    return dispatch(dtype, charge, hard, [&]<class S, int C, bool H>() {
        return launch(grid, block, blocks, nblocks, [=] {
            using HS = typename snn::SavedH<S, C>::type;
            snn::neuron_fwd<S, C, H>(static_cast<const S*>(x), v0, k, static_cast<S*>(spikes), static_cast<HS*>(h),
                                     v_last, n, steps, tau, v_threshold, v_reset, flags);
        });
    });
}

int emu_neuron_bwd(int dtype, int charge, int hard, int surrogate, unsigned grid, unsigned block,
                   const long long* blocks, long long nblocks, const void* grad_s, const float* grad_v, const void* h,
                   const float* v0, const float* k, void* grad_x, float* grad_v0, double* grad_k,
                   long long n, int steps, float tau, float v_threshold, float v_reset, float c1, float c2,
                   int flags) {
    return dispatch(dtype, charge, hard, [&]<class S, int C, bool H>() {
        auto run = [&]<int SG>() {
            return launch(grid, block, blocks, nblocks, [=] {
                using HS = typename snn::SavedH<S, C>::type;
                snn::neuron_bwd<S, C, H, SG>(static_cast<const S*>(grad_s), grad_v, static_cast<const HS*>(h), v0, k,
                                             static_cast<S*>(grad_x), grad_v0, grad_k, n, steps, tau, v_threshold,
                                             v_reset, c1, c2, flags);
            });
        };
        switch (surrogate) {
            case snn::SG_SIGMOID: return run.template operator()<snn::SG_SIGMOID>();
            case snn::SG_ATAN: return run.template operator()<snn::SG_ATAN>();
            case snn::SG_RECTANGLE: return run.template operator()<snn::SG_RECTANGLE>();
            case snn::SG_PIECEWISE_QUADRATIC: return run.template operator()<snn::SG_PIECEWISE_QUADRATIC>();
        }
        emu::report("unknown surrogate " + std::to_string(surrogate));
        return -1;
    });
}

}  // extern "C"
