// Fused multi-step neuron kernels (compiled by NVRTC, see kernels.py). One launch runs the whole recurrence over T:
// each thread owns one neuron, or with F_VEC a 16-byte vector of neighbouring neurons (4 float / 8 half or
// bfloat16), and walks t forward (neuron_fwd) or backward through time (neuron_bwd). The arithmetic lives in
// neuron_core.cuh. The CPU tests compile this file for the host (tests/cuda_host/) and launch it with the grid,
// block and arguments of ops.py.
//
// Template parameters: S = storage type (float, snn::half16, snn::bfloat16), CHARGE = snn::Charge, HARD = hard
// reset, SG = snn::Surrogate (backward only). Everything else is a runtime argument (Params / Flag). The state
// tensors (v0, v_last, grad_v, grad_v0: [N]) are float32, and so is PLIF's saved H (SavedH). k points at PLIF's
// decay (float32, device memory, so no host synchronisation). grad_k (PLIF) receives one float64 partial sum of dL/dk per block ([gridDim.x]), which the
// caller sums in a fixed order: the result does not depend on the blocks' timing.
#include "neuron_core.cuh"

namespace snn {

template <class S, int CHARGE, bool HARD>
__global__ void neuron_fwd(const S* x, const float* v0, const float* k, S* spikes,
                           typename SavedH<S, CHARGE>::type* h, float* v_last, long long n, int steps, float tau,
                           float v_threshold, float v_reset, int flags) {
    const Params p = {tau, v_threshold, v_reset, 0.0f, 0.0f, flags};
    const ForwardArgs<S, typename SavedH<S, CHARGE>::type> a = {x, v0, spikes, h, v_last, n, steps};
    const float decay = CHARGE == CHARGE_PLIF ? *k : 0.0f;
    const long long thread = static_cast<long long>(blockIdx.x) * blockDim.x + threadIdx.x;
    if (flags & F_VEC) {
        constexpr int W = 16 / sizeof(S);
        if (thread * W < n) forward_lanes<CHARGE, HARD, W>(p, a, thread * W, decay);
    } else if (thread < n) {
        forward_lanes<CHARGE, HARD, 1>(p, a, thread, decay);
    }
}

// out[blockIdx.x] = the sum of value over the block, in a fixed order. blockDim.x must be a multiple of 32 and at
// most 1024 (ops.launch_config enforces it): every warp is full for the shuffles.
__device__ __forceinline__ void store_block_sum(double value, double* out) {
    __shared__ double warp_sums[32];
    for (int offset = 16; offset > 0; offset >>= 1) value += __shfl_down_sync(0xffffffffu, value, offset);
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    if (lane == 0) warp_sums[warp] = value;
    __syncthreads();
    if (warp == 0) {
        value = lane < static_cast<int>(blockDim.x >> 5) ? warp_sums[lane] : 0.0;
        for (int offset = 16; offset > 0; offset >>= 1) value += __shfl_down_sync(0xffffffffu, value, offset);
        if (lane == 0) out[blockIdx.x] = value;
    }
}

template <class S, int CHARGE, bool HARD, int SG>
__global__ void neuron_bwd(const S* grad_s, const float* grad_v, const typename SavedH<S, CHARGE>::type* h,
                           const float* v0, const float* k, S* grad_x, float* grad_v0, double* grad_k, long long n,
                           int steps, float tau, float v_threshold, float v_reset, float c1, float c2, int flags) {
    const Params p = {tau, v_threshold, v_reset, c1, c2, flags};
    const BackwardArgs<S, typename SavedH<S, CHARGE>::type> a = {grad_s, grad_v, h, v0, grad_x, grad_v0, n, steps};
    const float decay = CHARGE == CHARGE_PLIF ? *k : 0.0f;
    const long long thread = static_cast<long long>(blockIdx.x) * blockDim.x + threadIdx.x;
    double dk = 0.0;
    if (flags & F_VEC) {
        constexpr int W = 16 / sizeof(S);
        if (thread * W < n) dk = backward_lanes<CHARGE, HARD, SG, W>(p, a, thread * W, decay);
    } else if (thread < n) {
        dk = backward_lanes<CHARGE, HARD, SG, 1>(p, a, thread, decay);
    }
    if (CHARGE == CHARGE_PLIF) store_block_sum(dk, grad_k);
}

}  // namespace snn
