"""torch.library custom ops ``snnzoo::neuron_fwd`` / ``snnzoo::neuron_bwd`` over the fused kernels.

Both ops have fake (meta) implementations and the forward has autograd, so ``torch.compile(fullgraph=True)`` traces a
model through them without graph breaks. Kernels launch on torch's current CUDA stream under a device guard.

Memory: forward saves only H ``[T, ...]`` in the input dtype (4 bytes per neuron and step in float32, 2 in
float16 / bfloat16), plus v0 and PLIF's 0-dim decay; spikes, every V[t] and the surrogate are recomputed in backward.
Forward moves 2 (inference) or 3 (training) dtype-sized values per neuron and step (read X; write S, H); backward
moves 3 (read H, dL/dS; write dL/dX). The state (v0, V[T] and their gradients, ``[...]``) is float32 in every dtype,
as in the torch backend.

``neuron_fwd(x [T, ...], v0 [...]?, k []?, charge, decay_input, tau, v_threshold, v_reset?, detach_reset,
surrogate, alpha, save_h) -> (spikes [T, ...] x.dtype, v_last [...] float32, h [T, ...] x.dtype or [0])``
``neuron_bwd(grad_s, grad_v?, h, v0?, k?, <same options>, need_grad_v0) -> (grad_x [T, ...], grad_v0 [...] float32
or [0], grad_k [] float32 (PLIF) or [0])``
"""
import math
from typing import Optional

import numpy as np
import torch
from torch import Tensor

from . import kernels
from .kernels import CHARGES

__all__ = ['multistep', 'neuron_fwd', 'neuron_bwd', 'flags', 'launch_config', 'BLOCK', 'VEC_MIN_THREADS']

BLOCK = 256
VEC_MIN_THREADS = 1 << 16   # vector loads only when the tensor still gives this many threads (else: more threads)

F_DECAY_INPUT, F_DETACH_RESET, F_HAS_V0, F_SAVE_H, F_HAS_GRAD_V, F_GRAD_V0, F_VEC = 1, 2, 4, 8, 16, 32, 64


def flags(decay_input: bool = False, detach_reset: bool = False, has_v0: bool = False, save_h: bool = False,
          has_grad_v: bool = False, grad_v0: bool = False, vec: bool = False) -> int:
    """The snn::Flag bit set."""
    return ((F_DECAY_INPUT if decay_input else 0) | (F_DETACH_RESET if detach_reset else 0)
            | (F_HAS_V0 if has_v0 else 0) | (F_SAVE_H if save_h else 0) | (F_HAS_GRAD_V if has_grad_v else 0)
            | (F_GRAD_V0 if grad_v0 else 0) | (F_VEC if vec else 0))


def launch_config(n: int, dtype: torch.dtype, tensors) -> tuple[bool, int]:
    """(use 16-byte vectors, number of threads) for ``n`` neurons whose tensors (None allowed) are all given."""
    width = 16 // dtype.itemsize
    vec = (n % width == 0 and n // width >= VEC_MIN_THREADS
           and all(t is None or t.data_ptr() % 16 == 0 for t in tensors))
    return vec, (n // width if vec else n)


def _ptr(t: Optional[Tensor]) -> int:
    return 0 if t is None or t.numel() == 0 else t.data_ptr()


def _initial(v_reset: Optional[float]) -> float:
    return 0.0 if v_reset is None else v_reset


def _check(x: Tensor, v0: Optional[Tensor], k: Optional[Tensor], charge: str) -> None:
    if charge not in CHARGES:
        raise ValueError(f"unknown charge {charge!r}; valid charges are {sorted(CHARGES)}")
    if str(x.dtype).removeprefix('torch.') not in kernels.DTYPES:
        raise TypeError(f"the fused kernels run float32, float16 and bfloat16, got {x.dtype}; use backend='torch'")
    if x.dim() < 1:
        raise ValueError(f"expected x of shape [T, ...], got {tuple(x.shape)}")
    if v0 is not None and (v0.shape != x.shape[1:] or v0.dtype != torch.float32 or v0.device != x.device):
        raise ValueError(f"v0 must be a float32 tensor of shape {tuple(x.shape[1:])} on {x.device}, got "
                         f"{v0.dtype} {tuple(v0.shape)} on {v0.device}")
    if (k is not None) != (charge == 'plif'):
        raise ValueError(f"charge {charge!r} {'needs' if charge == 'plif' else 'takes no'} decay tensor k")
    if k is not None and (k.shape != () or k.dtype != torch.float32 or k.device != x.device):
        raise ValueError(f"k must be a 0-dim float32 tensor on {x.device}, got {k.dtype} {tuple(k.shape)} "
                         f"on {k.device}")


def _dtype_name(t: Tensor) -> str:
    return str(t.dtype).removeprefix('torch.')


# The CPU tests install the host build of neuron_core.cuh here (same arguments as the kernels), so that the ops'
# argument handling and autograd run on CPU tensors; None in normal use.
_HOST_RUN = None


def _run(variant, device: torch.device, threads: int, args) -> None:
    """Launch ``variant`` with ``threads`` threads on torch's current stream of ``device``, under a device guard."""
    if device.type != 'cuda':
        if _HOST_RUN is None:
            raise RuntimeError(f"snnzoo::neuron_fwd / neuron_bwd run on CUDA tensors, got a tensor on {device}; "
                               f"use backend='torch' on this device")
        _HOST_RUN(variant, args)
        return
    import cupy
    fn = kernels.function(variant, device.index)
    stream = torch.cuda.current_stream(device)
    with torch.cuda.device(device), cupy.cuda.Device(device.index):
        fn(((threads + BLOCK - 1) // BLOCK,), (BLOCK,), args,
           stream=cupy.cuda.ExternalStream(stream.cuda_stream, device.index))


@torch.library.custom_op('snnzoo::neuron_fwd', mutates_args=())
def neuron_fwd(x: Tensor, v0: Optional[Tensor], k: Optional[Tensor], charge: str, decay_input: bool, tau: float,
               v_threshold: float, v_reset: Optional[float], detach_reset: bool, surrogate: int, alpha: float,
               save_h: bool) -> tuple[Tensor, Tensor, Tensor]:
    _check(x, v0, k, charge)
    x = x.contiguous()
    v0 = None if v0 is None else v0.contiguous()
    spikes = torch.empty_like(x)
    h = torch.empty_like(x) if save_h else x.new_empty(0)
    n, steps = math.prod(x.shape[1:]), x.shape[0]
    if steps == 0 or n == 0:
        v_last = v0.clone() if v0 is not None else x.new_full(x.shape[1:], _initial(v_reset), dtype=torch.float32)
        return spikes, v_last, h
    v_last = x.new_empty(x.shape[1:], dtype=torch.float32)
    vec, threads = launch_config(n, x.dtype, (x, v0, spikes, h if save_h else None, v_last))
    variant = kernels.variant_for('fwd', _dtype_name(x), charge, v_reset is not None, surrogate)
    f = flags(decay_input=decay_input, has_v0=v0 is not None, save_h=save_h, vec=vec)
    _run(variant, x.device, threads, (
        _ptr(x), _ptr(v0), _ptr(k), _ptr(spikes), _ptr(h), _ptr(v_last), np.int64(n), np.int32(steps),
        np.float32(tau), np.float32(v_threshold), np.float32(_initial(v_reset)), np.int32(f)))
    return spikes, v_last, h


@neuron_fwd.register_fake
def _neuron_fwd_fake(x, v0, k, charge, decay_input, tau, v_threshold, v_reset, detach_reset, surrogate, alpha,
                     save_h):
    _check(x, v0, k, charge)
    return (torch.empty_like(x), x.new_empty(x.shape[1:], dtype=torch.float32),
            torch.empty_like(x) if save_h else x.new_empty(0))


@torch.library.custom_op('snnzoo::neuron_bwd', mutates_args=())
def neuron_bwd(grad_s: Tensor, grad_v: Optional[Tensor], h: Tensor, v0: Optional[Tensor], k: Optional[Tensor],
               charge: str, decay_input: bool, tau: float, v_threshold: float, v_reset: Optional[float],
               detach_reset: bool, surrogate: int, alpha: float,
               need_grad_v0: bool) -> tuple[Tensor, Tensor, Tensor]:
    _check(h, v0, k, charge)
    grad_s = grad_s.to(h.dtype).contiguous()
    grad_v = None if grad_v is None else grad_v.to(torch.float32).contiguous()
    h = h.contiguous()
    grad_x = torch.empty_like(h)
    grad_v0 = h.new_empty(h.shape[1:], dtype=torch.float32) if need_grad_v0 else h.new_empty(0, dtype=torch.float32)
    grad_k = torch.zeros((), dtype=torch.float64, device=h.device) if charge == 'plif' else None
    n, steps = math.prod(h.shape[1:]), h.shape[0]
    if steps == 0 or n == 0:
        if need_grad_v0:
            grad_v0 = grad_v.clone() if grad_v is not None else grad_v0.zero_()
    else:
        vec, threads = launch_config(n, h.dtype, (grad_s, grad_v, h, v0, grad_x, grad_v0 if need_grad_v0 else None))
        variant = kernels.variant_for('bwd', _dtype_name(h), charge, v_reset is not None, surrogate)
        c1, c2 = kernels.surrogate_constants(surrogate, alpha)
        f = flags(decay_input=decay_input, detach_reset=detach_reset, has_v0=v0 is not None,
                  has_grad_v=grad_v is not None, grad_v0=need_grad_v0, vec=vec)
        _run(variant, h.device, threads, (
            _ptr(grad_s), _ptr(grad_v), _ptr(h), _ptr(v0), _ptr(k), _ptr(grad_x), _ptr(grad_v0), _ptr(grad_k),
            np.int64(n), np.int32(steps), np.float32(tau), np.float32(v_threshold), np.float32(_initial(v_reset)),
            c1, c2, np.int32(f)))
    return grad_x, grad_v0, (grad_k.float() if grad_k is not None else h.new_empty(0, dtype=torch.float32))


@neuron_bwd.register_fake
def _neuron_bwd_fake(grad_s, grad_v, h, v0, k, charge, decay_input, tau, v_threshold, v_reset, detach_reset,
                     surrogate, alpha, need_grad_v0):
    _check(h, v0, k, charge)
    grad_k = h.new_empty((), dtype=torch.float32) if charge == 'plif' else h.new_empty(0, dtype=torch.float32)
    grad_v0 = h.new_empty(h.shape[1:] if need_grad_v0 else (0,), dtype=torch.float32)
    return torch.empty_like(h), grad_v0, grad_k


def _setup_context(ctx, inputs, output):
    x, v0, k, *options, save_h = inputs
    ctx.options, ctx.save_h = tuple(options), save_h
    ctx.save_for_backward(output[2], v0, k)
    ctx.mark_non_differentiable(output[2])
    ctx.set_materialize_grads(False)


def _backward(ctx, grad_s, grad_v, grad_h):
    if not ctx.save_h:
        raise RuntimeError("snnzoo::neuron_fwd ran with save_h=False, so it saved nothing to differentiate; "
                           "call it with save_h=True (snnzoo.cuda.neuron_multistep decides this itself)")
    h, v0, k = ctx.saved_tensors
    need_x, need_v0, need_k = ctx.needs_input_grad[:3]
    if grad_s is None:
        grad_s = torch.zeros_like(h)
    grad_x, grad_v0, grad_k = torch.ops.snnzoo.neuron_bwd(grad_s, grad_v, h, v0, k, *ctx.options,
                                                          bool(need_v0 and v0 is not None))
    return (grad_x if need_x else None, grad_v0 if need_v0 and v0 is not None else None,
            grad_k if need_k else None) + (None,) * 9


neuron_fwd.register_autograd(_backward, setup_context=_setup_context)


def multistep(x: Tensor, v0: Optional[Tensor], k: Optional[Tensor], cfg, return_h: bool = False):
    """(spikes [T, ...], V[T] [...]) of the neuron ``cfg`` (a NeuronConfig) through the custom ops; with
    ``return_h`` also H [T, ...] (empty when no gradient can flow), whose ``float(H) >= V_th`` are the spikes.

    ``v0`` (``[...]``, optional) and ``k`` (PLIF's decay, 0-dim) are cast to float32, so autograd carries their
    gradients back through the casts; V[T] is float32. H is saved only when a gradient can flow.
    """
    if v0 is not None:
        v0 = v0.to(torch.float32)
    if k is not None:
        k = k.to(device=x.device, dtype=torch.float32)
    save_h = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (x, v0, k))
    spikes, v_last, h = torch.ops.snnzoo.neuron_fwd(
        x, v0, k, cfg.charge, bool(cfg.decay_input), float(cfg.tau), float(cfg.v_threshold),
        None if cfg.v_reset is None else float(cfg.v_reset), bool(cfg.detach_reset), int(cfg.surrogate_id),
        float(cfg.alpha), save_h)
    return (spikes, v_last, h) if return_h else (spikes, v_last)
