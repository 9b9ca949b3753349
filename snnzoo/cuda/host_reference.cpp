// Host build of neuron_core.cuh for the CPU tests: the kernels' exact per-neuron arithmetic, one neuron at a time.
// Build: g++ -O2 -std=c++20 -ffp-contract=off -shared -fPIC host_reference.cpp -o libsnn_host.so
// (no FMA contraction, like NVRTC --fmad=false). dtype: 0 float32, 1 float16 (needs _Float16), 2 bfloat16.
// Arguments mirror the kernels of neuron_kernels.cu; the functions return 0, or -1 for an unsupported combination.
#include "neuron_core.cuh"

namespace {

using namespace snn;

template <class S, int CHARGE, bool HARD>
void forward(const Params& p, const ForwardArgs<S>& a, float k) {
    for (long long i = 0; i < a.n; ++i) forward_lanes<CHARGE, HARD, 1>(p, a, i, k);
}

template <class S, int CHARGE, bool HARD, int SG>
double backward(const Params& p, const BackwardArgs<S>& a, float k) {
    double grad_k = 0.0;
    for (long long i = 0; i < a.n; ++i) grad_k += backward_lanes<CHARGE, HARD, SG, 1>(p, a, i, k);
    return grad_k;
}

template <class S, int CHARGE, bool HARD>
int backward_sg(int surrogate, const Params& p, const BackwardArgs<S>& a, float k, double* grad_k) {
    double sum;
    switch (surrogate) {
        case SG_SIGMOID: sum = backward<S, CHARGE, HARD, SG_SIGMOID>(p, a, k); break;
        case SG_ATAN: sum = backward<S, CHARGE, HARD, SG_ATAN>(p, a, k); break;
        case SG_RECTANGLE: sum = backward<S, CHARGE, HARD, SG_RECTANGLE>(p, a, k); break;
        case SG_PIECEWISE_QUADRATIC: sum = backward<S, CHARGE, HARD, SG_PIECEWISE_QUADRATIC>(p, a, k); break;
        default: return -1;
    }
    if (grad_k) *grad_k += sum;  // the kernels add into a zeroed float64 accumulator too
    return 0;
}

// Calls f.template operator()<CHARGE, HARD>() for the runtime (charge, hard).
template <class F> int with_charge(int charge, int hard, F f) {
    switch (charge * 2 + (hard ? 1 : 0)) {
        case 0: return f.template operator()<CHARGE_IF, false>();
        case 1: return f.template operator()<CHARGE_IF, true>();
        case 2: return f.template operator()<CHARGE_LIF, false>();
        case 3: return f.template operator()<CHARGE_LIF, true>();
        case 4: return f.template operator()<CHARGE_PLIF, false>();
        case 5: return f.template operator()<CHARGE_PLIF, true>();
        default: return -1;
    }
}

template <class S>
int forward_typed(int charge, int hard, const void* x, const float* v0, float k, void* spikes, void* h, float* v_last,
                  long long n, int steps, float tau, float v_threshold, float v_reset, int flags) {
    const Params p = {tau, v_threshold, v_reset, 0.0f, 0.0f, flags};
    const ForwardArgs<S> a = {static_cast<const S*>(x), v0, static_cast<S*>(spikes), static_cast<S*>(h), v_last, n,
                              steps};
    return with_charge(charge, hard, [&]<int C, bool H>() { forward<S, C, H>(p, a, k); return 0; });
}

template <class S>
int backward_typed(int charge, int hard, int surrogate, const void* grad_s, const float* grad_v, const void* h,
                   const float* v0, float k, void* grad_x, float* grad_v0, double* grad_k, long long n, int steps,
                   float tau, float v_threshold, float v_reset, float c1, float c2, int flags) {
    const Params p = {tau, v_threshold, v_reset, c1, c2, flags};
    const BackwardArgs<S> a = {static_cast<const S*>(grad_s), grad_v, static_cast<const S*>(h), v0,
                               static_cast<S*>(grad_x), grad_v0, n, steps};
    return with_charge(charge, hard,
                       [&]<int C, bool H>() { return backward_sg<S, C, H>(surrogate, p, a, k, grad_k); });
}

}  // namespace

extern "C" {

int snn_host_has_fp16() {
#if defined(SNN_HOST_FP16)
    return 1;
#else
    return 0;
#endif
}

int snn_host_forward(int dtype, int charge, int hard, const void* x, const float* v0, float k, void* spikes, void* h,
                     float* v_last, long long n, int steps, float tau, float v_threshold, float v_reset, int flags) {
    switch (dtype) {
        case 0: return forward_typed<float>(charge, hard, x, v0, k, spikes, h, v_last, n, steps, tau, v_threshold,
                                            v_reset, flags);
#if defined(SNN_HOST_FP16)
        case 1: return forward_typed<half16>(charge, hard, x, v0, k, spikes, h, v_last, n, steps, tau, v_threshold,
                                             v_reset, flags);
#endif
        case 2: return forward_typed<bfloat16>(charge, hard, x, v0, k, spikes, h, v_last, n, steps, tau,
                                               v_threshold, v_reset, flags);
        default: return -1;
    }
}

int snn_host_backward(int dtype, int charge, int hard, int surrogate, const void* grad_s, const float* grad_v,
                      const void* h, const float* v0, float k, void* grad_x, float* grad_v0, double* grad_k,
                      long long n, int steps, float tau, float v_threshold, float v_reset, float c1, float c2,
                      int flags) {
    switch (dtype) {
        case 0: return backward_typed<float>(charge, hard, surrogate, grad_s, grad_v, h, v0, k, grad_x, grad_v0,
                                             grad_k, n, steps, tau, v_threshold, v_reset, c1, c2, flags);
#if defined(SNN_HOST_FP16)
        case 1: return backward_typed<half16>(charge, hard, surrogate, grad_s, grad_v, h, v0, k, grad_x, grad_v0,
                                              grad_k, n, steps, tau, v_threshold, v_reset, c1, c2, flags);
#endif
        case 2: return backward_typed<bfloat16>(charge, hard, surrogate, grad_s, grad_v, h, v0, k, grad_x, grad_v0,
                                                grad_k, n, steps, tau, v_threshold, v_reset, c1, c2, flags);
        default: return -1;
    }
}

}  // extern "C"
