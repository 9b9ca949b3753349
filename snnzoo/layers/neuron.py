"""Multi-step spiking neurons: LIF, IF and parametric LIF, numerically equal to SpikingJelly's multi-step nodes.

Every node takes ``x`` of shape ``[T, ...]`` (time first; ``[T, B, C, H, W]`` or ``[T, B, N, D]`` in the models) and
returns spikes of the same shape and dtype. Per element, for t = 1..T, starting from V[0] = V_reset (0 for soft reset):

- charge   LIF (decay_input=True)  H[t] = V[t-1] + (X[t] - (V[t-1] - V_reset)) / tau
           LIF (decay_input=False) H[t] = V[t-1] - (V[t-1] - V_reset) / tau + X[t]
           PLIF                    the same with 1/tau = sigmoid(w), w a learnt scalar
           IF                      H[t] = V[t-1] + X[t]
           (soft reset, ``v_reset=None``: the V_reset term is dropped)
- fire     S[t] = Heaviside(H[t] - V_th); backward uses the surrogate derivative at H[t] - V_th
- reset    hard: V[t] = H[t] (1 - S[t]) + V_reset S[t];  soft: V[t] = H[t] - V_th S[t]
           ``detach_reset=True`` uses S[t].detach() in the reset.

A node is stateless by default: every call starts from V[0], so a model is a pure function of its input and needs no
``reset_net`` between batches. With ``stateful=True`` it keeps V across calls (streaming) until ``reset_net``.
Membrane state is never part of the state_dict.

Backends: ``'torch'`` runs the recurrence in one autograd Function (allocation-free steps, saving only H for backward;
float16 / bfloat16 inputs are computed in float32),
``'cupy'`` the fused CUDA kernels of :mod:`snnzoo.cuda`, ``'auto'`` the kernels for CUDA tensors when CuPy is
installed and works, else torch (a broken CuPy, e.g. NVRTC missing, gets one warning).
"""
import math
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn as nn

from ..cuda import empty_steps
from .saved_spikes import register_spikes
from .surrogate import default_alpha, surrogate_grad_, surrogate_id

__all__ = ['NeuronConfig', 'BaseNode', 'LIFNode', 'IFNode', 'ParametricLIFNode', 'BACKENDS', 'neuron_multistep']

BACKENDS = ('auto', 'torch', 'cupy')


@dataclass(frozen=True)
class NeuronConfig:
    """Everything that defines a neuron's recurrence except its decay (``tau`` for LIF; ``sigmoid(w)`` for PLIF).

    ``charge`` is ``'lif'`` (decay ``1 / tau``), ``'plif'`` (decay ``k`` given as a 0-dim tensor) or ``'if'``.
    """
    charge: str = 'lif'
    tau: float = 2.0
    decay_input: bool = True
    v_threshold: float = 1.0
    v_reset: Optional[float] = 0.0
    detach_reset: bool = False
    surrogate: str = 'sigmoid'
    alpha: float = 4.0

    @property
    def surrogate_id(self) -> int:
        return surrogate_id(self.surrogate)


def _charge(cfg: NeuronConfig, x: torch.Tensor, v: torch.Tensor, k, tau, out: torch.Tensor) -> None:
    """out = H[t] from X[t] and V[t-1], in SpikingJelly's operation order (bit-equal in every dtype).

    ``tau`` is a 0-dim tensor (LIF) so that ``addcdiv`` divides exactly as ``/ tau`` does; PLIF multiplies by ``k``.
    """
    if cfg.charge == 'if':
        torch.add(v, x, out=out)
        return
    dv = v if not cfg.v_reset else v - cfg.v_reset   # V[t-1] - V_reset
    if cfg.decay_input:                              # V + (X - dV) / tau
        torch.sub(x, dv, out=out)
        if k is None:
            torch.addcdiv(v, out, tau, out=out)
        else:                                        # (X - dV) k rounded before the addition, as SpikingJelly
            out.mul_(k).add_(v)
    else:                                            # V - dV / tau + X
        if k is None:                                # V + (-dV) / tau: no temporary, the same rounding
            torch.addcdiv(v, dv, tau, value=-1.0, out=out)
        else:                                        # (addcmul would fuse dV * k into one rounding)
            torch.sub(v, dv * k, out=out)
        out.add_(x)


def _charge_from_rest(cfg: NeuronConfig, x: torch.Tensor, k, tau, out: torch.Tensor) -> None:
    """out = H[1] from X[1] and the resting V[0] = V_reset (0 for soft reset), without materialising V[0].

    With V[0] = V_reset the charge terms (V[0] - V_reset) vanish exactly, so H[1] = V_reset + X[1] / tau (decay_input)
    or V_reset + X[1]: the same bits as :func:`_charge` on a V_reset-filled V[0].
    """
    if cfg.charge != 'if' and cfg.decay_input:
        torch.div(x, tau, out=out) if k is None else torch.mul(x, k, out=out)
    else:
        out.copy_(x)
    if cfg.v_reset:
        out.add_(cfg.v_reset)


def _fire_and_reset(cfg: NeuronConfig, h: torch.Tensor, s: torch.Tensor, v: torch.Tensor) -> None:
    """s = (H >= V_th); v = reset(H, s). Float-mask arithmetic, exact for s in {0, 1}."""
    torch.ge(h, cfg.v_threshold, out=s)
    if cfg.v_reset is None:
        torch.sub(h, s, alpha=cfg.v_threshold, out=v)            # H - V_th S
    else:
        torch.addcmul(h, h, s, value=-1.0, out=v)                # H (1 - S) ...
        if cfg.v_reset:
            v.add_(s, alpha=cfg.v_reset)                         # ... + V_reset S


class _MultiStepNeuron(torch.autograd.Function):
    """(x [T, ...], v0 [...] or None, k 0-dim tensor or None) -> (spikes [T, ...], V[T] [...], H [T, ...]).

    Saves only H [T, ...] in the input dtype (plus v0 for a stateful start, and PLIF's decay k); spikes and every
    V[t] are recomputed from H in backward. H is also returned (not differentiable) for :func:`register_spikes`.
    Every step writes into preallocated buffers: no allocation in the loop.
    Every step of the outputs and gradients has the layout of the input's step (e.g. channels-last frames).
    """

    @staticmethod
    def forward(ctx, x, v0, k, cfg: NeuronConfig):
        h_seq = empty_steps(x)
        s_seq = torch.empty_like(h_seq)
        tau = torch.tensor(cfg.tau, dtype=x.dtype, device=x.device) if k is None else None
        v = torch.empty_like(h_seq[0])
        for t in range(x.shape[0]):
            if t == 0 and v0 is None:
                _charge_from_rest(cfg, x[0], k, tau, out=h_seq[0])
            else:
                _charge(cfg, x[t], v0 if t == 0 else v, k, tau, out=h_seq[t])
            _fire_and_reset(cfg, h_seq[t], s_seq[t], v)
        ctx.set_materialize_grads(False)
        ctx.cfg = cfg
        ctx.save_for_backward(h_seq, v0, k)
        ctx.mark_non_differentiable(h_seq)
        return s_seq, v, h_seq

    @staticmethod
    def backward(ctx, grad_s, grad_v, grad_h):
        cfg: NeuronConfig = ctx.cfg
        h_seq, v0, k = ctx.saved_tensors
        th, r = cfg.v_threshold, cfg.v_reset
        grad_x = torch.empty_like(h_seq)
        sg, tmp, gh_buf, carry_buf = (torch.empty_like(h_seq[0]) for _ in range(4))
        # dL/dH[t] is built in grad_x[t] itself where dH/dX = 1 (IF, decay_input=False), else in gh_buf
        direct = cfg.charge == 'if' or not cfg.decay_input
        carry = grad_v  # dL/dV[t] from later steps (read-only), None when nothing flows in
        grad_k = torch.zeros((), dtype=torch.float64) if k is not None else None
        for t in range(h_seq.shape[0] - 1, -1, -1):
            h = h_seq[t]
            gh = grad_x[t] if direct else gh_buf
            torch.sub(h, th, out=sg)
            surrogate_grad_(cfg.surrogate, sg, cfg.alpha)
            if grad_s is None:
                gh.zero_()
            else:
                torch.mul(grad_s[t], sg, out=gh)
            if carry is not None:
                if r is None:                                      # dV/dH = 1 - V_th sg
                    if not cfg.detach_reset:
                        gh.addcmul_(carry, sg, value=-th)
                    gh.add_(carry)
                else:                                              # dV/dH = (1 - S) + (V_reset - H) sg
                    if not cfg.detach_reset:
                        torch.sub(h, r, out=tmp).mul_(sg)
                        gh.addcmul_(carry, tmp, value=-1.0)
                    gh.addcmul_(carry, torch.lt(h, th, out=tmp))
            if k is not None:                                      # dL/dk += sum(gh dH/dk)
                _previous_v(cfg, h_seq, t, v0, out=tmp)
                if cfg.decay_input:                                # dH/dk = X - (V[t-1] - V_reset) = (H - V[t-1]) / k
                    torch.sub(h, tmp, out=tmp).div_(k)
                else:                                              # dH/dk = -(V[t-1] - V_reset)
                    tmp.sub_(r or 0.0).neg_()
                grad_k += torch.sum(tmp.mul_(gh), dtype=torch.float64)
            if cfg.charge == 'if':                                 # dH/dX = dH/dV[t-1] = 1
                carry = gh
                continue
            decay_grad = tmp if direct else grad_x[t]              # gh / tau; dH/dX = 1/tau with decay_input
            torch.div(gh, cfg.tau, out=decay_grad) if k is None else torch.mul(gh, k, out=decay_grad)
            carry = torch.sub(gh, decay_grad, out=carry_buf)       # dH/dV[t-1] = 1 - 1/tau
        grad_v0 = None if v0 is None or carry is None else carry.clone()
        return grad_x, grad_v0, (grad_k.to(k.dtype) if k is not None else None), None


def _previous_v(cfg: NeuronConfig, h_seq: torch.Tensor, t: int, v0: Optional[torch.Tensor], out: torch.Tensor):
    """out = V[t-1], recomputed from H[t-1] (or the initial state)."""
    if t > 0:
        spikes = torch.empty_like(out)
        _fire_and_reset(cfg, h_seq[t - 1], spikes, out)
    elif v0 is not None:
        out.copy_(v0)
    else:
        out.fill_(0.0 if cfg.v_reset is None else cfg.v_reset)
    return out


def _traceable_multistep(x: torch.Tensor, v0: Optional[torch.Tensor], k: Optional[torch.Tensor], cfg: NeuronConfig
                         ) -> tuple[torch.Tensor, torch.Tensor]:
    """The recurrence as plain out-of-place ops, for ``torch.export`` / ONNX (T unrolled; the ``out=`` buffers of the
    eager path cannot be differentiated or exported cleanly). Same operation order, hence the same bits. With
    gradients the spike is ``S + (H - H.detach()) sg(H - V_th)`` (sg detached): the same value, and dS/dH = sg in
    a graph that ``torch.export`` can trace (it does not keep an autograd.Function's backward)."""
    dx = (lambda d: d / cfg.tau) if k is None else (lambda d: d * k)
    spikes, v = [], v0
    for t in range(x.shape[0]):
        if v is None:                                               # from rest, V[0] = V_reset
            h = x[t] if cfg.charge == 'if' or not cfg.decay_input else dx(x[t])
            h = h + cfg.v_reset if cfg.v_reset else h
        elif cfg.charge == 'if':
            h = v + x[t]
        else:
            dv = v - cfg.v_reset if cfg.v_reset else v
            h = v + dx(x[t] - dv) if cfg.decay_input else v - dx(dv) + x[t]
        s = (h >= cfg.v_threshold).to(h.dtype)
        if h.requires_grad:
            s = s + (h - h.detach()) * surrogate_grad_(cfg.surrogate, h.detach() - cfg.v_threshold, cfg.alpha)
        r = s.detach() if cfg.detach_reset else s
        if cfg.v_reset is None:
            v = h - r * cfg.v_threshold
        else:
            v = h * (1.0 - r) + r * cfg.v_reset if cfg.v_reset else h * (1.0 - r)
        spikes.append(s)
    return torch.stack(spikes), v


def neuron_multistep(x: torch.Tensor, v0: Optional[torch.Tensor], k: Optional[torch.Tensor], cfg: NeuronConfig,
                     backend: str = 'auto') -> tuple[torch.Tensor, torch.Tensor]:
    """Run the recurrence of ``cfg`` over ``x [T, ...]`` from ``v0`` (None: the initial state); return (S, V[T])."""
    if torch.compiler.is_exporting() or torch.jit.is_tracing():
        return _traceable_multistep(x, v0, k, cfg)
    if _use_cupy(backend, x):
        from snnzoo import cuda
        spikes, v, h = cuda.neuron_multistep(x, v0, k, cfg, return_h=True)
    elif x.dtype in (torch.float16, torch.bfloat16):  # arithmetic in float32, like the kernels; spikes in x's dtype
        spikes, v, h = _MultiStepNeuron.apply(x.float(), None if v0 is None else v0.float(),
                                              None if k is None else k.float(), cfg)
        spikes = spikes.to(x.dtype)
    else:
        spikes, v, h = _MultiStepNeuron.apply(x, v0, k, cfg)
    register_spikes(spikes, h, cfg.v_threshold)
    return spikes, v


def _use_cupy(backend: str, x: torch.Tensor) -> bool:
    """'cupy' raises when the kernels cannot run ``x``; 'auto' then falls back to torch (warning once per device
    when CuPy is installed but broken)."""
    if backend == 'torch':
        return False
    from snnzoo import cuda
    if backend == 'cupy':
        cuda.require(x)
        return True
    return cuda.is_available(x) and cuda.usable_for_auto(x.device)


def _check_backend(backend: str) -> str:
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; valid backends are {list(BACKENDS)}")
    return backend


class BaseNode(nn.Module):
    """Common part of the multi-step nodes: threshold, reset, surrogate, backend, optional streaming state.

    Args:
        v_threshold: firing threshold V_th.
        v_reset: hard-reset potential V_reset, or ``None`` for soft reset (subtract V_th).
        detach_reset: detach the spike in the reset path.
        surrogate: ``'sigmoid'``, ``'atan'``, ``'rectangle'`` or ``'piecewise_quadratic'``.
        alpha: surrogate sharpness (default per surrogate, see :mod:`snnzoo.layers.surrogate`).
        backend: ``'auto'``, ``'torch'`` or ``'cupy'``.
        stateful: keep V across calls until :func:`snnzoo.layers.reset_net` (default: every call starts afresh).
    """

    charge = 'lif'

    def __init__(self, v_threshold: float = 1.0, v_reset: Optional[float] = 0.0, detach_reset: bool = False,
                 surrogate: str = 'sigmoid', alpha: Optional[float] = None, backend: str = 'auto',
                 stateful: bool = False):
        super().__init__()
        alpha = default_alpha(surrogate) if alpha is None else float(alpha)
        if alpha <= 0:
            raise ValueError(f"surrogate alpha must be positive, got {alpha}")
        if v_reset is not None and v_reset >= v_threshold:
            raise ValueError(f"v_reset ({v_reset}) must be below v_threshold ({v_threshold}); "
                             f"use v_reset=None for a soft reset")
        self.v_threshold = float(v_threshold)
        self.v_reset = None if v_reset is None else float(v_reset)
        self.detach_reset = bool(detach_reset)
        self.surrogate = surrogate
        self.alpha = alpha
        self.backend = _check_backend(backend)
        self.stateful = bool(stateful)
        self.v: Optional[torch.Tensor] = None

    def config(self) -> NeuronConfig:
        return NeuronConfig(charge=self.charge, v_threshold=self.v_threshold, v_reset=self.v_reset,
                            detach_reset=self.detach_reset, surrogate=self.surrogate, alpha=self.alpha)

    def decay(self) -> Optional[torch.Tensor]:
        return None

    def reset(self) -> None:
        """Forget the streaming state (only meaningful with ``stateful=True``)."""
        self.v = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_input(x, type(self).__name__)
        v0 = self.v if self.stateful else None
        if v0 is not None and v0.shape != x.shape[1:]:
            raise ValueError(f"{type(self).__name__}(stateful=True) holds a state of shape {tuple(v0.shape)} but got "
                             f"input {tuple(x.shape)}; call snnzoo.layers.reset_net(model) before a new stream")
        spikes, v = neuron_multistep(x, v0, self.decay(), self.config(), self.backend)
        if self.stateful:
            self.v = v
        return spikes

    def extra_repr(self) -> str:
        return (f"v_threshold={self.v_threshold}, v_reset={self.v_reset}, detach_reset={self.detach_reset}, "
                f"surrogate={self.surrogate}(alpha={self.alpha}), backend={self.backend}"
                + (", stateful=True" if self.stateful else ""))


def _check_input(x: torch.Tensor, name: str) -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} expects a tensor [T, ...], got {type(x).__name__}")
    if x.dim() < 2:
        raise ValueError(f"{name} is multi-step and expects input [T, ...] of rank >= 2 (time first), got shape "
                         f"{tuple(x.shape)}; add the time dimension, e.g. x.unsqueeze(0) for a single step")
    if not x.is_floating_point():
        raise TypeError(f"{name} expects a floating-point input, got {x.dtype}; convert it with x.float()")


class LIFNode(BaseNode):
    """Leaky integrate-and-fire neuron (multi-step).

    H[t] = V[t-1] + (X[t] - (V[t-1] - V_reset)) / tau   (decay_input=True)
    H[t] = V[t-1] - (V[t-1] - V_reset) / tau + X[t]     (decay_input=False)
    S[t] = Heaviside(H[t] - V_th);  V[t] = reset(H[t], S[t])

    Input and output ``[T, ...]``. ``tau > 1``. See the module docstring for reset, state and backends.
    """

    def __init__(self, tau: float = 2.0, decay_input: bool = True, v_threshold: float = 1.0,
                 v_reset: Optional[float] = 0.0, detach_reset: bool = False, surrogate: str = 'sigmoid',
                 alpha: Optional[float] = None, backend: str = 'auto', stateful: bool = False):
        super().__init__(v_threshold, v_reset, detach_reset, surrogate, alpha, backend, stateful)
        if not tau > 1:
            raise ValueError(f"LIFNode needs tau > 1 (got {tau}): the decay 1/tau must lie in (0, 1); "
                             f"use IFNode for a non-leaky neuron")
        self.tau = float(tau)
        self.decay_input = bool(decay_input)

    def config(self) -> NeuronConfig:
        return NeuronConfig(charge='lif', tau=self.tau, decay_input=self.decay_input, v_threshold=self.v_threshold,
                            v_reset=self.v_reset, detach_reset=self.detach_reset, surrogate=self.surrogate,
                            alpha=self.alpha)

    def extra_repr(self) -> str:
        return f"tau={self.tau}, decay_input={self.decay_input}, " + super().extra_repr()


class IFNode(BaseNode):
    """Integrate-and-fire neuron (multi-step): H[t] = V[t-1] + X[t]; S[t] = Heaviside(H[t] - V_th); V[t] = reset.

    Input and output ``[T, ...]``.
    """

    charge = 'if'


class ParametricLIFNode(BaseNode):
    """Parametric LIF (Fang et al. 2021): a LIF whose decay 1/tau = sigmoid(w) is learnt, one scalar per layer.

    H[t] = V[t-1] + (X[t] - (V[t-1] - V_reset)) sigmoid(w)   (decay_input=True)
    H[t] = V[t-1] - (V[t-1] - V_reset) sigmoid(w) + X[t]     (decay_input=False)

    ``w`` starts at ``-log(init_tau - 1)`` (so 1/tau = 1/init_tau) and receives gradients.
    Input and output ``[T, ...]``.
    """

    charge = 'plif'

    def __init__(self, init_tau: float = 2.0, decay_input: bool = True, v_threshold: float = 1.0,
                 v_reset: Optional[float] = 0.0, detach_reset: bool = False, surrogate: str = 'sigmoid',
                 alpha: Optional[float] = None, backend: str = 'auto', stateful: bool = False):
        super().__init__(v_threshold, v_reset, detach_reset, surrogate, alpha, backend, stateful)
        if not init_tau > 1:
            raise ValueError(f"ParametricLIFNode needs init_tau > 1, got {init_tau}")
        self.decay_input = bool(decay_input)
        self.w = nn.Parameter(torch.tensor(-math.log(init_tau - 1.0)))

    def config(self) -> NeuronConfig:
        return NeuronConfig(charge='plif', decay_input=self.decay_input, v_threshold=self.v_threshold,
                            v_reset=self.v_reset, detach_reset=self.detach_reset, surrogate=self.surrogate,
                            alpha=self.alpha)

    def decay(self) -> torch.Tensor:
        return self.w.sigmoid()

    def extra_repr(self) -> str:
        return f"tau={1.0 / self.w.sigmoid().item():.4f}, decay_input={self.decay_input}, " + super().extra_repr()
