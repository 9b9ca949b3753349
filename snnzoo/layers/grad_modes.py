"""Gradient modes: how a spiking network is trained through time, chosen per model with one switch.

- ``'bptt'``   plain backpropagation through time: one forward over ``[T, B, ...]``, one backward; every step's
  activations are kept until the backward (memory grows with T).
- ``'exact'``  the same gradients, recomputed: every block (a direct element of a ``ModuleList`` / ``Sequential`` that
  holds a neuron, or a top-level module that holds one) runs under ``torch.utils.checkpoint`` (non-reentrant, the
  RNG of dropout / drop-path preserved), so only block inputs outlive the forward; spikes that autograd saves are
  rebuilt from the neurons' ``H`` (:func:`~snnzoo.layers.recompute_saved_spikes`). The recomputation runs the blocks'
  BatchNorms without updating their running statistics, so buffers end equal to BPTT's too.
- ``'sltt'``   spatial learning through time (Meng et al., ICCV 2023): the model runs one step at a time, every neuron
  starting from the previous step's membrane *detached* (the temporal gradient through V is dropped), and each step's
  loss ``l(o_t, y) / T`` is back-propagated right after its forward, so only one step's activations are alive.
  ``k``: SLTT-K, back-propagate only ``k`` steps drawn at random (the others run under ``no_grad``).
- ``'ottt'``   online training through time (Xiao et al., NeurIPS 2022): per step as SLTT, and every convolution /
  linear layer whose input is spikes (values in {0, 1}) takes its weight gradient from the presynaptic trace
  ``a[t] = lambda a[t-1] + s[t]`` instead of ``s[t]``: ``dL/dW = sum_t g[t] a[t]^T``, ``g[t] = dl_t/du[t]``. Layers
  with real-valued inputs (the first, image-reading layer; SEW's ADD sums) keep the instantaneous input. It does not
  apply to spike x spike attention: there ``Q K^T V`` multiplies two time-varying activations, and the trace of a
  product is not the product of the traces, so no presynaptic trace gives its gradient; such models raise.

Per-step execution (SLTT, OTTT) changes what a training-mode BatchNorm sees: one step's batch ``B`` instead of
``T x B``. ``bn_stats='sequence'`` (the default) keeps BPTT's statistics: a forward under ``no_grad`` over all T steps
(BPTT's forward, each layer's ``[T*B, ...]`` activations freed as the next is computed) first records every
BatchNorm's mean and variance over ``T x B``; each per-step pass normalises with them and back-propagates through its
own step's share of them (``mu = mu_seq + (mean_t(x) - sg(mean_t(x))) / T``, likewise ``E[x^2]``; the other steps'
shares are constants: the paths between steps, which SLTT drops). Every step sees exactly BPTT's forward and the
running statistics are updated once per batch, as BPTT's; it costs one more forward and a peak of one layer's T steps.
``bn_stats='step'`` normalises each step alone (T running updates per batch, memory strictly flat in T); the trained
network then meets, at evaluation, running statistics that no training step used. On Fashion-MNIST (T=2, 300 steps
of batch 64, ``benchmarks/bench_grad_mode_accuracy.py``) BPTT reaches 80.25%, BPTT with its BatchNorm statistics taken
as constants 75.60%, SLTT / OTTT with per-step statistics 76.35 / 75.75%, with sequence statistics as constants
79.10 / 80.60% and with sequence statistics and their per-step gradient (the default) 80.55 / 81.90%. A BatchNorm
subclass with its own ``forward`` (or one whose ``forward`` was replaced) keeps per-step statistics. Static images run
the model with ``T = 1`` per step (the same image every step); event frames ``[B, T, C, H, W]`` feed frame ``t``.
OTTT's trace decay is one value for the model (``1 - 1/tau`` of its first neuron, a PLIF's decay as it is when the mode
is set); a BatchNorm between a layer and its neuron applies step t's statistics to the whole trace (OTTT's derivation
has no BatchNorm).

Usage::

    model.set_grad_mode('sltt', k=4)                       # or snnzoo.layers.set_grad_mode(model, 'sltt', k=4)
    model.set_grad_mode('ottt', bn_stats='step')           # BatchNorm statistics per step (memory flat in T)
    out, loss = forward_backward(model, x, y, criterion)   # any mode: forward + backward, gradients accumulated
"""
import random
import types
from contextlib import contextmanager, nullcontext
from typing import Callable, Iterator, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from .neuron import BaseNode

__all__ = ['GRAD_MODES', 'BN_STATS', 'GradModeMixin', 'set_grad_mode', 'get_grad_mode', 'set_block_checkpointing',
           'forward_backward', 'spike_product_modules']

GRAD_MODES = ('bptt', 'exact', 'sltt', 'ottt')
BN_STATS = ('step', 'sequence')
_PER_STEP = ('sltt', 'ottt')


def spike_product_modules() -> tuple:
    """The layer classes that multiply two spike tensors (spike x spike attention), where OTTT does not apply."""
    from .attention import SpikingSelfAttention
    from .metaformer_blocks import SpikeDrivenSelfAttentionV2
    from .qk_attention import ChannelQKAttention, TokenQKAttention
    from .sdsa import SpikeDrivenSelfAttention
    return SpikingSelfAttention, SpikeDrivenSelfAttention, SpikeDrivenSelfAttentionV2, TokenQKAttention, \
        ChannelQKAttention


def _neurons(model: nn.Module) -> list:
    return [m for m in model.modules() if isinstance(m, BaseNode)]


def _batchnorms(module: nn.Module) -> list:
    return [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


def _has_neuron(module: nn.Module) -> bool:
    return any(isinstance(m, BaseNode) for m in module.modules())


# ----------------------------------------------------------------------------------------------------- exact mode
def _checkpoint_units(module: nn.Module) -> Iterator[nn.Module]:
    """The blocks to recompute: the outermost modules below ``module`` that hold a neuron, descending through plain
    containers (``ModuleList`` / ``Sequential``) so that a stage is checkpointed block by block. A lone neuron is
    skipped: its checkpoint would save its input instead of its H, no saving."""
    for child in module.children():
        if isinstance(child, BaseNode) or not _has_neuron(child):
            continue
        if type(child) in (nn.Sequential, nn.ModuleList):
            yield from _checkpoint_units(child)
        else:
            yield child


_BN_BUFFERS = ('running_mean', 'running_var', 'num_batches_tracked')


def _batchnorm_contexts(module: nn.Module):
    """``context_fn`` of a checkpointed block: the recomputation sees its BatchNorms' running statistics as the
    original forward saw them (some layers read them, e.g. Meta-SpikeFormer's BN padding) and updates copies, which
    are dropped; the live buffers are rebound, never modified in place (autograd may hold them)."""
    bns = [m for m in _batchnorms(module) if m.track_running_stats]
    before = []

    @contextmanager
    def original() -> Iterator[None]:
        before[:] = [[m._buffers[n].clone() for n in _BN_BUFFERS] for m in bns]
        yield

    @contextmanager
    def recompute() -> Iterator[None]:
        live = [[m._buffers[n] for n in _BN_BUFFERS] for m in bns]
        for m, buffers in zip(bns, before):
            m._buffers.update(zip(_BN_BUFFERS, buffers))   # not setattr: nn.Module.__setattr__ costs ~10 us a call
        try:
            yield
        finally:
            for m, buffers in zip(bns, live):
                m._buffers.update(zip(_BN_BUFFERS, buffers))

    return (original(), recompute()) if bns else (nullcontext(), nullcontext())


def _checkpointed_forward(self: nn.Module, *args, **kwargs):
    if not (torch.is_grad_enabled() and self.training) or torch.jit.is_scripting():
        return type(self).forward(self, *args, **kwargs)
    return checkpoint(type(self).forward, self, *args, use_reentrant=False, preserve_rng_state=True,
                      determinism_check='none', context_fn=lambda: _batchnorm_contexts(self), **kwargs)


def set_block_checkpointing(model: nn.Module, enable: bool = True) -> nn.Module:
    """Recompute every block of ``model`` in backward (see the module docstring, ``'exact'``); returns ``model``.

    Only training-mode forwards with gradients are checkpointed; evaluation runs unchanged.
    """
    for unit in _checkpoint_units(model):
        if enable:
            unit.forward = types.MethodType(_checkpointed_forward, unit)
        elif 'forward' in unit.__dict__:
            del unit.forward
    return model


# ---------------------------------------------------------------------------------------------------- the switch
def set_grad_mode(model: nn.Module, mode: str, k: Optional[int] = None, ottt_lambda: Optional[float] = None,
                  bn_stats: str = 'sequence') -> nn.Module:
    """Train ``model`` with gradient mode ``mode`` (``'bptt'``, ``'exact'``, ``'sltt'``, ``'ottt'``); returns ``model``.

    ``k`` (SLTT only): back-propagate ``k`` randomly chosen steps of each sequence. ``ottt_lambda`` (OTTT only): the
    trace decay, default ``1 - 1/tau`` of the model's first neuron (1 for IF neurons). ``bn_stats`` (SLTT / OTTT):
    BatchNorm statistics over the whole sequence (``'sequence'``, BPTT's) or per step (``'step'``).
    Raises ``ValueError`` for an unknown mode or a combination that cannot work (see the module docstring).
    """
    if mode not in GRAD_MODES:
        raise ValueError(f"unknown grad mode {mode!r}; valid modes are {list(GRAD_MODES)}")
    if k is not None and (mode != 'sltt' or int(k) < 1):
        raise ValueError(f"k={k} (SLTT-K) needs grad mode 'sltt' and k >= 1, got mode {mode!r}")
    if bn_stats not in BN_STATS:
        raise ValueError(f"unknown bn_stats {bn_stats!r}; valid values are {list(BN_STATS)}")
    if ottt_lambda is not None and (mode != 'ottt' or not 0.0 <= ottt_lambda <= 1.0):
        raise ValueError(f"ottt_lambda={ottt_lambda} needs grad mode 'ottt' and a value in [0, 1]")
    neurons = _neurons(model)
    if mode in _PER_STEP:
        if not neurons:
            raise ValueError(f"grad mode {mode!r} needs a network of snnzoo neurons; {type(model).__name__} has none")
        if any(n.stateful for n in neurons):
            raise ValueError(f"grad mode {mode!r} runs every step from the previous step's detached membrane and "
                             f"cannot continue a stateful=True stream; use set_stateful(model, False) or grad mode "
                             f"'bptt' / 'exact'")
        if not isinstance(getattr(model, 'T', None), int):
            raise ValueError(f"grad mode {mode!r} needs a model with an integer attribute T (snnzoo's models); "
                             f"{type(model).__name__} has none: use 'bptt' or 'exact'")
    if mode == 'ottt':
        spiky = sorted({type(m).__name__ for m in model.modules() if isinstance(m, spike_product_modules())})
        if spiky:
            raise ValueError(f"grad mode 'ottt' does not apply to {type(model).__name__}: its {', '.join(spiky)} "
                             f"multiplies spikes by spikes, whose gradient no presynaptic trace gives; use 'sltt' "
                             f"(also memory-flat in T), 'exact' or 'bptt'")
        if ottt_lambda is None:
            ottt_lambda = _membrane_decay(neurons[0])
    set_block_checkpointing(model, mode == 'exact')
    if hasattr(model, 'set_recompute_spikes') and mode == 'exact':
        model.set_recompute_spikes(True)
    model.grad_mode = mode
    model.grad_mode_opts = {'k': None if k is None else int(k), 'ottt_lambda': ottt_lambda, 'bn_stats': bn_stats}
    return model


def _membrane_decay(neuron: BaseNode) -> float:
    """lambda of H[t] = lambda V[t-1] + ...: 1 - 1/tau (LIF), 1 - sigmoid(w) (PLIF), 1 (IF)."""
    if neuron.charge == 'if':
        return 1.0
    return 1.0 - (1.0 / neuron.tau if neuron.charge == 'lif' else float(neuron.decay().detach()))


def get_grad_mode(model: nn.Module) -> str:
    """The mode set by :func:`set_grad_mode` (``'bptt'`` by default); a DDP / compiled wrapper is looked through."""
    return getattr(_unwrap(model), 'grad_mode', 'bptt')


def _unwrap(model: nn.Module) -> nn.Module:
    while isinstance(getattr(model, 'module', None), nn.Module) or hasattr(model, '_orig_mod'):
        model = getattr(model, 'module', None) or model._orig_mod
    return model


class GradModeMixin:
    """``set_grad_mode`` and timm's ``set_grad_checkpointing`` (block-wise, exact; see :mod:`.grad_modes`)."""

    grad_mode = 'bptt'

    def set_grad_mode(self, mode: str, **opts) -> None:
        set_grad_mode(self, mode, **opts)

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        set_block_checkpointing(self, enable)


# -------------------------------------------------------------------------------------------- per-step execution
def _trace_forward(self: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """OTTT's conv / linear: the value ``f(x; W)``, the input gradient ``W^T g`` and the weight gradient ``g a^T``."""
    state = self._ottt_state
    if state['spikes'] is None:
        state['spikes'] = bool(((x == 0) | (x == 1)).all())
    if not state['spikes'] or not torch.is_grad_enabled():
        return type(self).forward(self, x)
    a = x.detach() if state['trace'] is None else torch.add(x.detach(), state['trace'], alpha=state['lambda'])
    state['trace'] = a
    weight, bias = self.weight, self.bias
    if isinstance(self, nn.Linear):
        value = F.linear(x, weight.detach(), None if bias is None else bias.detach())
        grad_path = F.linear(a, weight, bias)
    else:
        value = self._conv_forward(x, weight.detach(), None if bias is None else bias.detach())
        grad_path = self._conv_forward(a, weight, bias)
    return value + (grad_path - grad_path.detach())


def _record_statistics(self: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """A BatchNorm's training forward over the whole sequence that keeps its batch mean / variance per call (in float32
    at least, as BatchNorm computes them under autocast)."""
    stats_dtype = torch.promote_types(x.dtype, torch.float32)
    var, mean = torch.var_mean(x.to(stats_dtype), dim=[0] + list(range(2, x.dim())), unbiased=False)
    self._sequence_stats['calls'].append((mean, var, x.numel() // x.shape[1]))
    return F.batch_norm(x, mean, var, self.weight, self.bias, False, 0.0, self.eps)


class _ShareOfStatistics(torch.autograd.Function):
    """``y = (x - mu) r w + b``, ``r = 1 / sqrt(var + eps)``, with ``mu``, ``var`` the sequence's statistics over
    ``T x B``; backward differentiates them in this step's ``share`` (``1 / T``) of their elements only:
    ``dx = r w (g - share (mean(g) + x_hat mean(g x_hat)))``, means over this step's elements per channel. That is
    BatchNorm's training backward (``share = 1``) with the statistics' terms scaled, and saves what it saves: ``x``."""

    @staticmethod
    def forward(ctx, x, weight, bias, mean, var, eps, share):
        invstd = torch.rsqrt(var + eps)
        ctx.save_for_backward(x, weight, mean, invstd)
        ctx.share = share
        return F.batch_norm(x, mean, var, weight, bias, False, 0.0, eps)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g):
        x, weight, mean, invstd = ctx.saved_tensors
        dims, shape = [0] + list(range(2, x.dim())), (1, -1) + (1,) * (x.dim() - 2)
        x_hat = (x - mean.view(shape)) * invstd.view(shape)
        g_sum, gx_sum = g.sum(dims), (g * x_hat).sum(dims)
        n = g.numel() // g.shape[1]
        scale = invstd if weight is None else invstd * weight
        dx = scale.view(shape) * (g - (ctx.share / n) * (g_sum.view(shape) + x_hat * gx_sum.view(shape)))
        affine = weight is not None
        return dx, gx_sum if affine else None, g_sum if affine else None, None, None, None, None


def _apply_statistics(self: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """One step normalised with the statistics its call recorded over the sequence (:class:`_ShareOfStatistics`)."""
    state = self._sequence_stats
    mean, var, n = state['calls'][state['next'] % len(state['calls'])]
    state['next'] += 1
    return _ShareOfStatistics.apply(x, self.weight, self.bias, mean, var, self.eps, (x.numel() // x.shape[1]) / n)


def _update_running_statistics(bn: nn.Module) -> None:
    """``running = (1 - m) running + m batch`` (unbiased variance) per recorded call, as a training forward does."""
    if bn.running_mean is None:
        return
    for mean, var, n in bn._sequence_stats['calls']:
        bn.num_batches_tracked.add_(1)
        f = 1.0 / float(bn.num_batches_tracked) if bn.momentum is None else bn.momentum
        bn.running_mean.mul_(1 - f).add_(mean, alpha=f)
        bn.running_var.mul_(1 - f).add_(var * (n / max(n - 1, 1)), alpha=f)


@contextmanager
def _sequence_statistics(model: nn.Module, x: torch.Tensor, autocast) -> Iterator[None]:
    """BatchNorm statistics over all T steps for a per-step pass (see the module docstring): record them with a
    ``no_grad`` forward of ``x``, normalise every step with them, update the running statistics once on exit."""
    bns = [m for m in _batchnorms(model) if m.training and 'forward' not in vars(m)
           and type(m).forward is nn.modules.batchnorm._BatchNorm.forward]
    for m in bns:
        m._sequence_stats = {'calls': [], 'next': 0}
        m.forward = types.MethodType(_record_statistics, m)
    try:
        with torch.no_grad(), autocast:
            model(x)
        for m in bns:
            m.forward = types.MethodType(_apply_statistics, m)
        yield
        with torch.no_grad():
            for m in bns:
                _update_running_statistics(m)
    finally:
        for m in bns:
            del m.forward, m._sequence_stats


@contextmanager
def _per_step_execution(model: nn.Module, ottt_lambda: Optional[float]) -> Iterator[list]:
    """The model run one step per call (``T = 1``), its neurons carrying the membrane between calls; OTTT's traced
    layers when ``ottt_lambda`` is given. Everything is restored on exit."""
    neurons, T = _neurons(model), model.T
    traced = [m for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d))
              ] if ottt_lambda is not None else []
    model.T = 1
    for n in neurons:
        n.stateful, n.v = True, None
    for m in traced:
        m._ottt_state = {'lambda': float(ottt_lambda), 'trace': None, 'spikes': None}
        m.forward = types.MethodType(_trace_forward, m)
    try:
        yield neurons
    finally:
        model.T = T
        for n in neurons:
            n.stateful, n.v = False, None
        for m in traced:
            del m.forward, m._ottt_state


def _detach_state(neurons: list) -> None:
    for n in neurons:
        if n.v is not None:
            n.v = n.v.detach()


def forward_backward(model: nn.Module, x: torch.Tensor, y: torch.Tensor, criterion: Callable,
                     per_step_output: bool = False, scale: Callable = lambda loss: loss,
                     autocast=None, sync: Optional[Callable] = None) -> Tuple[torch.Tensor, torch.Tensor]:
    """One training forward and backward of ``model`` in its grad mode; gradients accumulate into ``.grad``.

    ``x``: ``[B, C, H, W]`` or event frames ``[B, T, C, H, W]``; ``criterion(out, y)`` a loss on logits
    ``[B, num_classes]`` (or ``[T, B, num_classes]`` when ``per_step_output``, e.g. TET). ``scale(loss)`` is what is
    back-propagated (e.g. ``loss / accum_steps`` or a grad scaler's ``scale``); ``autocast`` a context for the forwards;
    ``sync(last)`` a context for each backward (e.g. DDP's ``no_sync`` unless ``last``).
    Returns the detached logits (``[B, num_classes]``, averaged over T; per step ``[T, B, num_classes]``) and loss.
    BPTT / exact: ``criterion(model(x), y)``. SLTT / OTTT: ``sum_t criterion(o_t, y) / T`` with one backward per step.
    """
    inner = _unwrap(model)
    mode = getattr(inner, 'grad_mode', 'bptt')
    autocast = autocast or nullcontext()
    sync = sync or (lambda last: nullcontext())
    if mode not in _PER_STEP:
        with autocast:
            out = model(x, return_per_step=True) if per_step_output else model(x)
            loss = criterion(out, y)
        with sync(True):
            scale(loss).backward()
        return out.detach(), loss.detach()
    opts = inner.grad_mode_opts
    T = x.shape[1] if x.dim() == 5 else inner.T
    k = opts['k']
    chosen = set(range(T)) if k is None or k >= T else set(random.sample(range(T), k))
    last = max(chosen)
    outs, loss_sum = [], 0.0
    statistics = _sequence_statistics(inner, x, autocast) if opts.get('bn_stats') == 'sequence' else nullcontext()
    with statistics, _per_step_execution(inner, opts['ottt_lambda'] if mode == 'ottt' else None) as neurons:
        for t in range(T):
            xt = x[:, t:t + 1] if x.dim() == 5 else x
            with torch.set_grad_enabled(t in chosen), autocast:
                out = model(xt, return_per_step=True) if per_step_output else model(xt)
                loss = criterion(out, y) / T
            _detach_state(neurons)
            if t in chosen:
                with sync(t == last):
                    scale(loss).backward()
            outs.append(out.detach())
            loss_sum = loss_sum + loss.detach()
    out = torch.cat(outs) if per_step_output else torch.stack(outs).mean(0)
    return out, loss_sum
