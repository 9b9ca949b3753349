// Per-neuron recurrence of snnzoo's multi-step LIF / IF / PLIF nodes: the device code of the fused kernels
// (neuron_kernels.cu). NVRTC compiles it for the GPU; the CPU tests compile the very same code for the host through
// a shim of the CUDA built-ins (tests/cuda_host/shim.h). Both keep every float operation separately rounded (NVRTC
// --fmad=false, g++ -ffp-contract=off); the fused multiply-adds below are explicit fmaf calls where the torch
// backend uses addcmul (which PyTorch fuses).
//
// Layout: a sequence tensor is [T, N] (time first, N neurons; each step dense, in any memory order shared by every
// tensor of one launch, e.g. channels-last frames); a state tensor is [N] in the same order.
// Per neuron, for t = 0..T-1, from V = v0 (or V_reset, 0 for soft reset):
//   charge  IF                      H = V + X
//           LIF decay_input         H = (X - (V - V_reset)) / tau + V
//           PLIF decay_input        H = (X - (V - V_reset)) k + V
//           LIF/PLIF !decay_input   H = (V - (V - V_reset) / tau) + X        (PLIF: "* k")
//   fire    S = (H >= V_th)
//   reset   hard: V = H - H S (+ V_reset S);   soft: V = H - V_th S       (float arithmetic: inf H gives NaN V)
// Backward (reverse time, carry = dL/dV[t], absent at t = T-1 without dL/dV[T]; sg = surrogate'(H - V_th)):
//   gH      = gS sg - [carry (H - V_reset) sg] + carry (H < V_th)  hard reset
//           = gS sg - [V_th carry sg] + carry                       soft reset ([...]: dropped by detach_reset)
//   gX      = gH / tau or gH k (decay_input), else gH;   carry <- gH - gH / tau (or gH k)   (IF: gX = carry <- gH)
//   PLIF    dL/dk += gH dH/dk,  dH/dk = (H - V[t-1]) / k (decay_input) or -(V[t-1] - V_reset)
// The operation order, the fused multiply-adds and the NaN / inf propagation are those of snnzoo's torch backend
// (snnzoo/layers/neuron.py), so float32 results agree bit for bit except for the sigmoid's exp (a few ulp).
// Arithmetic is float32. Sequences are stored as float, IEEE half or bfloat16 (round to nearest even); the state
// (v0, V[T] and their gradients, [N]) is always float32. For 16-bit storage the saved H is nudged by one unit in
// the last place where rounding would flip (H >= V_th), so backward recomputes exactly the spikes forward emitted.
// PLIF saves H in float32 in every dtype (SavedH): its dL/dk sums gH (H - V[t-1]) / k, whose subtraction would
// cancel most of a 16-bit H's 8 or 11 bits (and the division by a small k magnify the rest).
#pragma once

#define SNN_HD __device__ __forceinline__

#if defined(__CUDACC_RTC__)
// IEEE half <-> float32 (the host emulation's shim defines the same two functions)
__device__ __forceinline__ float snn_half_to_float(unsigned short b) {
    float f;
    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(b));
    return f;
}
__device__ __forceinline__ unsigned short snn_float_to_half(float f) {
    unsigned short b;
    asm("cvt.rn.f16.f32 %0, %1;" : "=h"(b) : "f"(f));
    return b;
}
#endif

namespace snn {

enum Charge { CHARGE_IF = 0, CHARGE_LIF = 1, CHARGE_PLIF = 2 };
enum Surrogate { SG_SIGMOID = 0, SG_ATAN = 1, SG_RECTANGLE = 2, SG_PIECEWISE_QUADRATIC = 3 };
enum Flag {
    F_DECAY_INPUT = 1,    // LIF/PLIF: the input is scaled by the decay
    F_DETACH_RESET = 2,   // backward: the reset path carries no surrogate gradient
    F_HAS_V0 = 4,         // an initial state tensor is given (else V_reset, or 0 for soft reset)
    F_SAVE_H = 8,         // forward: write H for backward
    F_HAS_GRAD_V = 16,    // backward: a gradient w.r.t. V[T] is given (else none flows in)
    F_GRAD_V0 = 32,       // backward: write dL/dv0
    F_VEC = 64,           // kernels: 16-byte vector loads (N divisible by the vector width, pointers aligned)
    F_HAS_GRAD_S = 128,   // backward: a gradient w.r.t. the spikes is given (else 0)
};

// Runtime options. v_reset is 0 for soft reset. Surrogate constants (float32 of the torch backend's scalars):
//   sigmoid c1 = c2 = alpha;  atan c1 = pi/2 alpha, c2 = alpha/2;  rectangle c1 = alpha/2, c2 = 1/alpha;
//   piecewise_quadratic c1 = -alpha^2, c2 = alpha.
struct Params {
    float tau, v_threshold, v_reset, c1, c2;
    int flags;
};

// ---- storage types: float32 registers, float / half / bfloat16 in memory ----------------------------------------

struct half16 { unsigned short bits; };
struct bfloat16 { unsigned short bits; };

// Storage of the H that forward saves for backward: the sequences' type S, float for PLIF.
template <class S, int CHARGE> struct SavedH { using type = S; };
template <class S> struct SavedH<S, CHARGE_PLIF> { using type = float; };

SNN_HD float to_float(float v) { return v; }
SNN_HD float to_float(half16 v) { return snn_half_to_float(v.bits); }
SNN_HD float to_float(bfloat16 v) { return __uint_as_float(static_cast<unsigned>(v.bits) << 16); }

template <class S> SNN_HD S from_float(float f);

template <> SNN_HD float from_float<float>(float f) { return f; }

template <> SNN_HD half16 from_float<half16>(float f) { return half16{snn_float_to_half(f)}; }

template <> SNN_HD bfloat16 from_float<bfloat16>(float f) {
    unsigned u = __float_as_uint(f);
    bfloat16 r;
    if ((u & 0x7fffffffu) > 0x7f800000u) {
        r.bits = static_cast<unsigned short>((u >> 16) | 0x40u);  // quiet NaN
    } else {
        u += 0x7fffu + ((u >> 16) & 1u);                           // round to nearest even
        r.bits = static_cast<unsigned short>(u >> 16);
    }
    return r;
}

// The neighbouring 16-bit value towards +inf (up) or -inf (down) of a finite sign-magnitude encoding.
SNN_HD unsigned short step16(unsigned short b, bool up) {
    const bool negative = (b & 0x8000u) != 0;
    if ((b & 0x7fffu) == 0) return up ? 0x0001u : 0x8001u;  // +-0
    return static_cast<unsigned short>(negative == up ? b - 1u : b + 1u);
}

template <class S> SNN_HD S keep_spike(S r, float, float) { return r; }

template <class S> SNN_HD S keep_spike16(S r, float h, float v_threshold) {
    const bool spike = h >= v_threshold;
    if ((to_float(r) >= v_threshold) != spike) r.bits = step16(r.bits, spike);
    return r;
}

template <> SNN_HD half16 keep_spike<half16>(half16 r, float h, float v_threshold) {
    return keep_spike16(r, h, v_threshold);
}

template <> SNN_HD bfloat16 keep_spike<bfloat16>(bfloat16 r, float h, float v_threshold) {
    return keep_spike16(r, h, v_threshold);
}

// W consecutive elements starting at p; W > 1 lanes move as 16-byte vectors (p must be 16-byte aligned and
// W * sizeof(S) a multiple of 16).
template <int W, class S> SNN_HD void load_lanes(const S* p, float* out) {
    if constexpr (W > 1) {
        static_assert(W * sizeof(S) % 16 == 0, "vector accesses are whole 16-byte words");
        constexpr int V = W * sizeof(S) / 16;
        union { uint4 u[V]; S e[W]; } pack;
        for (int j = 0; j < V; ++j) pack.u[j] = reinterpret_cast<const uint4*>(p)[j];
        for (int j = 0; j < W; ++j) out[j] = to_float(pack.e[j]);
    } else {
        out[0] = to_float(p[0]);
    }
}

template <int W, class S> SNN_HD void store_packed(S* p, const S* e) {
    if constexpr (W > 1) {
        static_assert(W * sizeof(S) % 16 == 0, "vector accesses are whole 16-byte words");
        constexpr int V = W * sizeof(S) / 16;
        union { uint4 u[V]; S e[W]; } pack;
        for (int j = 0; j < W; ++j) pack.e[j] = e[j];
        for (int j = 0; j < V; ++j) reinterpret_cast<uint4*>(p)[j] = pack.u[j];
    } else {
        p[0] = e[0];
    }
}

template <int W, class S> SNN_HD void store_lanes(S* p, const float* in) {
    S e[W];
    for (int j = 0; j < W; ++j) e[j] = from_float<S>(in[j]);
    store_packed<W>(p, e);
}

template <int W, class S> SNN_HD void store_h_lanes(S* p, const float* h, float v_threshold) {
    S e[W];
    for (int j = 0; j < W; ++j) e[j] = keep_spike<S>(from_float<S>(h[j]), h[j], v_threshold);
    store_packed<W>(p, e);
}

// ---- one step of one neuron -------------------------------------------------------------------------------------

template <bool HARD> SNN_HD float initial_v(const Params& p) { return HARD ? p.v_reset : 0.0f; }

template <int CHARGE> SNN_HD float charge(const Params& p, float x, float v, float k) {
    if (CHARGE == CHARGE_IF) return v + x;
    const float dv = v - p.v_reset;
    const bool decay_input = (p.flags & F_DECAY_INPUT) != 0;
    if (CHARGE == CHARGE_LIF) return decay_input ? (x - dv) / p.tau + v : (v - dv / p.tau) + x;
    return decay_input ? (x - dv) * k + v : (v - dv * k) + x;
}

SNN_HD float fire(const Params& p, float h) { return h >= p.v_threshold ? 1.0f : 0.0f; }

template <bool HARD> SNN_HD float reset(const Params& p, float h, float s) {
    if (!HARD) return h - p.v_threshold * s;
    const float v = h - h * s;
    return p.v_reset != 0.0f ? v + p.v_reset * s : v;
}

// d Heaviside / dz, replaced by the surrogate derivative sg(z), z = H - V_th (NaN in, NaN out, as in torch).
template <int SG> SNN_HD float surrogate_grad(const Params& p, float z) {
    if (SG == SG_SIGMOID) {
        const float s = 1.0f / (1.0f + expf(-(z * p.c1)));
        return fmaf(-s, s, s) * p.c2;
    }
    if (SG == SG_ATAN) {
        const float u = z * p.c1;
        return (1.0f / (u * u + 1.0f)) * p.c2;
    }
    if (SG == SG_RECTANGLE) return fabsf(z) < p.c1 ? p.c2 : 0.0f;
    const float q = fabsf(z) * p.c1 + p.c2;
    return q < 0.0f ? 0.0f : q;  // clamp_min(0), keeping NaN (fmaxf would drop it)
}

// Backward through step t: returns dL/dV[t-1]; writes dL/dX[t] and this step's dL/dk term (PLIF). ``carry`` is
// used only when ``has_carry``; ``dh_dk`` is dH/dk (PLIF).
template <int CHARGE, bool HARD, int SG>
SNN_HD float backward_step(const Params& p, float h, float grad_s, bool has_carry, float carry, float dh_dk,
                           float k, float& grad_x, float& grad_k) {
    const float sg = surrogate_grad<SG>(p, h - p.v_threshold);
    const bool detach = (p.flags & F_DETACH_RESET) != 0;
    float gh = (p.flags & F_HAS_GRAD_S) ? grad_s * sg : 0.0f;
    if (has_carry) {
        if (HARD) {
            if (!detach) gh = fmaf(-carry, (h - p.v_reset) * sg, gh);
            gh = fmaf(carry, h < p.v_threshold ? 1.0f : 0.0f, gh);   // 1 - S, but 0 for a NaN H (as torch.lt)
        } else {
            if (!detach) gh = fmaf(-p.v_threshold * carry, sg, gh);
            gh = gh + carry;
        }
    }
    if (CHARGE == CHARGE_IF) {
        grad_x = gh;
        return gh;
    }
    if (CHARGE == CHARGE_PLIF) grad_k = dh_dk * gh;
    const float decayed = CHARGE == CHARGE_LIF ? gh / p.tau : gh * k;
    grad_x = (p.flags & F_DECAY_INPUT) ? decayed : gh;
    return gh - decayed;
}

// ---- the recurrence over T for W neighbouring neurons (W = 1: one neuron) ---------------------------------------

template <class S, class HS> struct ForwardArgs {
    const S* x;        // [T, N]
    const float* v0;   // [N] or null
    S* spikes;         // [T, N]
    HS* h;             // [T, N] (written when F_SAVE_H)
    float* v_last;     // [N]
    long long n;
    int steps;
};

template <class S, class HS> struct BackwardArgs {
    const S* grad_s;       // [T, N] or null (F_HAS_GRAD_S)
    const float* grad_v;   // [N] or null: dL/dV[T]
    const HS* h;           // [T, N] as saved by forward
    const float* v0;       // [N] or null
    S* grad_x;             // [T, N]
    float* grad_v0;        // [N] (written when F_GRAD_V0)
    long long n;
    int steps;
};

template <int CHARGE, bool HARD, int W, class S, class HS>
SNN_HD void forward_lanes(const Params& p, const ForwardArgs<S, HS>& a, long long i, float k) {
    float v[W];
    if (p.flags & F_HAS_V0) {
        load_lanes<W>(a.v0 + i, v);
    } else {
        for (int j = 0; j < W; ++j) v[j] = initial_v<HARD>(p);
    }
    for (int t = 0; t < a.steps; ++t) {
        const long long o = t * a.n + i;
        float x[W], h[W], s[W];
        load_lanes<W>(a.x + o, x);
        for (int j = 0; j < W; ++j) {
            h[j] = charge<CHARGE>(p, x[j], v[j], k);
            s[j] = fire(p, h[j]);
            v[j] = reset<HARD>(p, h[j], s[j]);
        }
        store_lanes<W>(a.spikes + o, s);
        if (p.flags & F_SAVE_H) store_h_lanes<W>(a.h + o, h, p.v_threshold);
    }
    store_lanes<W>(a.v_last + i, v);
}

// Returns this thread's share of dL/dk (PLIF; 0 otherwise), summed in double.
template <int CHARGE, bool HARD, int SG, int W, class S, class HS>
SNN_HD double backward_lanes(const Params& p, const BackwardArgs<S, HS>& a, long long i, float k) {
    float carry[W], h[W];
    bool has_carry = (p.flags & F_HAS_GRAD_V) != 0;
    if (has_carry) {
        load_lanes<W>(a.grad_v + i, carry);
    } else {
        for (int j = 0; j < W; ++j) carry[j] = 0.0f;
    }
    load_lanes<W>(a.h + (a.steps - 1) * a.n + i, h);
    double grad_k = 0.0;
    for (int t = a.steps - 1; t >= 0; --t) {
        const long long o = t * a.n + i;
        float h_prev[W], v_prev[W], gs[W], gx[W], dh_dk[W];
        for (int j = 0; j < W; ++j) h_prev[j] = gs[j] = 0.0f;
        if (t > 0) {
            load_lanes<W>(a.h + (t - 1) * a.n + i, h_prev);
            for (int j = 0; j < W; ++j) v_prev[j] = reset<HARD>(p, h_prev[j], fire(p, h_prev[j]));
        } else if (CHARGE == CHARGE_PLIF && (p.flags & F_HAS_V0)) {
            load_lanes<W>(a.v0 + i, v_prev);
        } else {
            for (int j = 0; j < W; ++j) v_prev[j] = initial_v<HARD>(p);
        }
        if (p.flags & F_HAS_GRAD_S) load_lanes<W>(a.grad_s + o, gs);
        if (CHARGE == CHARGE_PLIF) {
            for (int j = 0; j < W; ++j) {
                dh_dk[j] = (p.flags & F_DECAY_INPUT) ? (h[j] - v_prev[j]) / k : -(v_prev[j] - p.v_reset);
            }
        }
        for (int j = 0; j < W; ++j) {
            float dk = 0.0f;
            carry[j] = backward_step<CHARGE, HARD, SG>(p, h[j], gs[j], has_carry, carry[j],
                                                       CHARGE == CHARGE_PLIF ? dh_dk[j] : 0.0f, k, gx[j], dk);
            if (CHARGE == CHARGE_PLIF) grad_k += static_cast<double>(dk);
            h[j] = h_prev[j];
        }
        has_carry = true;
        store_lanes<W>(a.grad_x + o, gx);
    }
    if (p.flags & F_GRAD_V0) store_lanes<W>(a.grad_v0 + i, carry);
    return grad_k;
}

}  // namespace snn
