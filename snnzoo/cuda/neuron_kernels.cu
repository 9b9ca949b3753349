// Fused multi-step neuron kernels (compiled by NVRTC, see kernels.py). One launch runs the whole recurrence over T:
// each thread owns one neuron, or with F_VEC a 16-byte vector of neighbouring neurons (4 float / 8 half or
// bfloat16), and walks t forward (neuron_fwd) or backward through time (neuron_bwd). The arithmetic lives in
// neuron_core.cuh, shared with the host build that the CPU tests check.
//
// Template parameters: S = storage type (float, snn::half16, snn::bfloat16), CHARGE = snn::Charge, HARD = hard
// reset, SG = snn::Surrogate (backward only). Everything else is a runtime argument (Params / Flag). The state
// tensors (v0, v_last, grad_v, grad_v0: [N]) are float32. k points at PLIF's decay (float32, device memory, so no
// host synchronisation); grad_k (PLIF) is a float64 accumulator, one atomic add per block.
#include "neuron_core.cuh"

namespace snn {

template <class S, int CHARGE, bool HARD>
__global__ void neuron_fwd(const S* x, const float* v0, const float* k, S* spikes, S* h, float* v_last, long long n,
                           int steps, float tau, float v_threshold, float v_reset, int flags) {
    const Params p = {tau, v_threshold, v_reset, 0.0f, 0.0f, flags};
    const ForwardArgs<S> a = {x, v0, spikes, h, v_last, n, steps};
    const float decay = CHARGE == CHARGE_PLIF ? *k : 0.0f;
    const long long thread = static_cast<long long>(blockIdx.x) * blockDim.x + threadIdx.x;
    if (flags & F_VEC) {
        constexpr int W = 16 / sizeof(S);
        if (thread * W < n) forward_lanes<CHARGE, HARD, W>(p, a, thread * W, decay);
    } else if (thread < n) {
        forward_lanes<CHARGE, HARD, 1>(p, a, thread, decay);
    }
}

__device__ __forceinline__ void add_block_sum(double value, double* out) {
    __shared__ double warp_sums[32];
    for (int offset = 16; offset > 0; offset >>= 1) value += __shfl_down_sync(0xffffffffu, value, offset);
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    if (lane == 0) warp_sums[warp] = value;
    __syncthreads();
    if (warp == 0) {
        value = lane < static_cast<int>((blockDim.x + 31) >> 5) ? warp_sums[lane] : 0.0;
        for (int offset = 16; offset > 0; offset >>= 1) value += __shfl_down_sync(0xffffffffu, value, offset);
        if (lane == 0) atomicAdd(out, value);
    }
}

template <class S, int CHARGE, bool HARD, int SG>
__global__ void neuron_bwd(const S* grad_s, const float* grad_v, const S* h, const float* v0, const float* k,
                           S* grad_x, float* grad_v0, double* grad_k, long long n, int steps, float tau,
                           float v_threshold, float v_reset, float c1, float c2, int flags) {
    const Params p = {tau, v_threshold, v_reset, c1, c2, flags};
    const BackwardArgs<S> a = {grad_s, grad_v, h, v0, grad_x, grad_v0, n, steps};
    const float decay = CHARGE == CHARGE_PLIF ? *k : 0.0f;
    const long long thread = static_cast<long long>(blockIdx.x) * blockDim.x + threadIdx.x;
    double dk = 0.0;
    if (flags & F_VEC) {
        constexpr int W = 16 / sizeof(S);
        if (thread * W < n) dk = backward_lanes<CHARGE, HARD, SG, W>(p, a, thread * W, decay);
    } else if (thread < n) {
        dk = backward_lanes<CHARGE, HARD, SG, 1>(p, a, thread, decay);
    }
    if (CHARGE == CHARGE_PLIF) add_block_sum(dk, grad_k);
}

}  // namespace snn
