"""torch.library custom ops ``snnzoo::neuron_fwd`` / ``snnzoo::neuron_bwd`` over the fused kernels.

Both ops have fake (meta) implementations and the forward has autograd, so ``torch.compile(fullgraph=True)`` traces a
model through them without graph breaks. Kernels launch on torch's current CUDA stream under a device guard.

Layout: like the torch backend, every output step has the memory layout of the input's step (e.g. channels-last
frames ``[T, B, C, H, W]`` stay channels-last): an input whose steps are dense and back to back is used in place;
any other is copied once into that layout. The fake implementations allocate with the same rule
(:func:`empty_steps`), so compiled graphs see the real strides.

Memory: forward saves only H ``[T, ...]`` in the input dtype (4 bytes per neuron and step in float32, 2 in
float16 / bfloat16; PLIF: float32 in every dtype, since its dL/dk sums (H - V[t-1]) / k, which a 16-bit H cannot
give precisely), plus v0 and PLIF's 0-dim decay; spikes, every V[t] and the surrogate are recomputed in backward.
Forward moves 2 (inference) or 3 (training) dtype-sized values per
neuron and step (read X; write S, H); backward moves 3 (read H, dL/dS; write dL/dX). The state (v0, V[T] and their
gradients, ``[...]``) is float32 in every dtype, as in the torch backend.

``neuron_fwd(x [T, ...], v0 [...]?, k []?, charge, decay_input, tau, v_threshold, v_reset?, detach_reset,
surrogate, alpha, save_h) -> (spikes [T, ...] x.dtype, v_last [...] float32, h [T, ...] (x.dtype; PLIF float32) or
[0])``
``neuron_bwd(grad_s?, grad_v?, h, v0?, k?, dtype, <same options>, need_grad_v0) -> (grad_x [T, ...] dtype, grad_v0
[...] float32 or [0], grad_k [] float32 (PLIF) or [0])`` (``dtype``: forward's x.dtype)
"""
import math
from typing import NamedTuple, Optional

import numpy as np
import torch
from torch import Tensor

from . import empty_steps, kernels
from .kernels import CHARGES

__all__ = ['multistep', 'neuron_fwd', 'neuron_bwd', 'fwd_launch', 'bwd_launch', 'flags', 'launch_config', 'Launch',
           'empty_steps', 'BLOCK', 'VEC_MIN_THREADS']

BLOCK = 256
VEC_MIN_THREADS = 1 << 16   # vector loads only when the tensor still gives this many threads (else: more threads)

(F_DECAY_INPUT, F_DETACH_RESET, F_HAS_V0, F_SAVE_H, F_HAS_GRAD_V, F_GRAD_V0, F_VEC,
 F_HAS_GRAD_S) = (1 << i for i in range(8))


def flags(decay_input: bool = False, detach_reset: bool = False, has_v0: bool = False, save_h: bool = False,
          has_grad_v: bool = False, grad_v0: bool = False, vec: bool = False, has_grad_s: bool = False) -> int:
    """The snn::Flag bit set."""
    bits = (decay_input, detach_reset, has_v0, save_h, has_grad_v, grad_v0, vec, has_grad_s)
    return sum(1 << i for i, on in enumerate(bits) if on)


class Launch(NamedTuple):
    """One kernel launch: 16-byte vector accesses or not, blocks in the grid, threads per block."""
    vec: bool
    grid: int
    block: int


def launch_config(n: int, dtype: torch.dtype, tensors, block: int = BLOCK) -> Launch:
    """The launch for ``n`` neurons whose tensors (None allowed) are all given. ``block`` must be a multiple of 32
    (every warp full, for the block reduction's shuffles) and at most 1024."""
    if block % 32 or not 32 <= block <= 1024:
        raise ValueError(f"the kernels run blocks of a multiple of 32 threads, at most 1024, got {block}")
    width = 16 // dtype.itemsize
    vec = (n % width == 0 and n // width >= VEC_MIN_THREADS
           and all(t is None or t.data_ptr() % 16 == 0 for t in tensors))
    threads = n // width if vec else n
    return Launch(vec, (threads + block - 1) // block, block)


def _state(seq: Tensor) -> Tensor:
    """An uninitialised float32 state ``[...]`` in the layout of a step of ``seq`` (from :func:`empty_steps`)."""
    return torch.empty_strided(seq.shape[1:], seq.stride()[1:], dtype=torch.float32, device=seq.device)


def _same_layout(a: Tensor, b: Tensor) -> bool:
    return a.shape == b.shape and all(n == 1 or sa == sb for n, sa, sb in zip(a.shape, a.stride(), b.stride()))


def _in_layout(t: Optional[Tensor], like: Tensor, dtype: Optional[torch.dtype] = None) -> Optional[Tensor]:
    """``t`` in ``dtype`` (default ``like``'s) and ``like``'s layout: itself when it is already, else a copy."""
    dtype = like.dtype if dtype is None else dtype
    if t is None or (t.dtype == dtype and _same_layout(t, like)):
        return t
    return torch.empty_like(like, dtype=dtype).copy_(t)


def _ptr(t: Optional[Tensor]) -> int:
    return 0 if t is None or t.numel() == 0 else t.data_ptr()


def _initial(v_reset: Optional[float]) -> float:
    return 0.0 if v_reset is None else v_reset


def _check(x: Tensor, v0: Optional[Tensor], k: Optional[Tensor], charge: str,
           dtype: Optional[torch.dtype] = None) -> None:
    """Check the arguments of the ops (``dtype``: of the sequences, default ``x.dtype``)."""
    dtype = x.dtype if dtype is None else dtype
    if charge not in CHARGES:
        raise ValueError(f"unknown charge {charge!r}; valid charges are {sorted(CHARGES)}")
    if str(dtype).removeprefix('torch.') not in kernels.DTYPES:
        raise TypeError(f"the fused kernels run float32, float16 and bfloat16, got {dtype}; use backend='torch'")
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


# The CPU tests install a host launcher here: ``_HOST_RUN(variant, launch, args)`` runs the kernels of
# neuron_kernels.cu compiled for the host (tests/cuda_host) on CPU tensors; None in normal use.
_HOST_RUN = None


def fwd_launch(x, v0, k, spikes, h, v_last, charge, decay_input, tau, v_threshold, v_reset):
    """(variant, launch, kernel arguments) of neuron_fwd on these tensors (all dense in one step layout; ``h`` empty
    or None when not saved; T, N > 0)."""
    n, steps = math.prod(x.shape[1:]), x.shape[0]
    save_h = h is not None and h.numel() > 0
    launch = launch_config(n, x.dtype, (x, v0, spikes, h if save_h else None, v_last))
    variant = kernels.variant_for('fwd', _dtype_name(x), charge, v_reset is not None, 0)
    f = flags(decay_input=decay_input, has_v0=v0 is not None, save_h=save_h, vec=launch.vec)
    return variant, launch, (
        _ptr(x), _ptr(v0), _ptr(k), _ptr(spikes), _ptr(h), _ptr(v_last), np.int64(n), np.int32(steps),
        np.float32(tau), np.float32(v_threshold), np.float32(_initial(v_reset)), np.int32(f))


def bwd_launch(grad_s, grad_v, h, v0, k, grad_x, grad_v0, partial_k, charge, decay_input, tau, v_threshold,
               v_reset, detach_reset, surrogate, alpha):
    """(variant, launch, kernel arguments) of neuron_bwd on these tensors (``grad_s``, ``grad_v``, ``v0``,
    ``grad_v0`` may be None; ``partial_k``: PLIF's zeroed float64 partial sums, at least one per block)."""
    n, steps = math.prod(h.shape[1:]), h.shape[0]
    launch = launch_config(n, grad_x.dtype, (grad_s, grad_v, h, v0, grad_x, grad_v0))
    variant = kernels.variant_for('bwd', _dtype_name(grad_x), charge, v_reset is not None, surrogate)
    c1, c2 = kernels.surrogate_constants(surrogate, alpha)
    f = flags(decay_input=decay_input, detach_reset=detach_reset, has_v0=v0 is not None,
              has_grad_v=grad_v is not None, grad_v0=grad_v0 is not None, vec=launch.vec,
              has_grad_s=grad_s is not None)
    return variant, launch, (
        _ptr(grad_s), _ptr(grad_v), _ptr(h), _ptr(v0), _ptr(k), _ptr(grad_x), _ptr(grad_v0),
        _ptr(partial_k), np.int64(n), np.int32(steps), np.float32(tau), np.float32(v_threshold),
        np.float32(_initial(v_reset)), c1, c2, np.int32(f))


def _run(device: torch.device, variant, launch: Launch, args) -> None:
    """Launch ``variant`` on torch's current stream of ``device``, under a device guard."""
    if device.type != 'cuda':
        if _HOST_RUN is None:
            raise RuntimeError(f"snnzoo::neuron_fwd / neuron_bwd run on CUDA tensors, got a tensor on {device}; "
                               f"use backend='torch' on this device")
        _HOST_RUN(variant, launch, args)
        return
    import cupy
    fn = kernels.function(variant, device.index)
    stream = torch.cuda.current_stream(device)
    with torch.cuda.device(device), cupy.cuda.Device(device.index):
        fn((launch.grid,), (launch.block,), args, stream=cupy.cuda.ExternalStream(stream.cuda_stream, device.index))


@torch.library.custom_op('snnzoo::neuron_fwd', mutates_args=())
def neuron_fwd(x: Tensor, v0: Optional[Tensor], k: Optional[Tensor], charge: str, decay_input: bool, tau: float,
               v_threshold: float, v_reset: Optional[float], detach_reset: bool, surrogate: int, alpha: float,
               save_h: bool) -> tuple[Tensor, Tensor, Tensor]:
    _check(x, v0, k, charge)
    spikes, v_last, h = _fwd_outputs(x, charge, save_h)
    x, v0 = _in_layout(x, spikes), _in_layout(v0, v_last)
    n, steps = math.prod(x.shape[1:]), x.shape[0]
    if steps == 0 or n == 0:
        return spikes, v_last.copy_(v0) if v0 is not None else v_last.fill_(_initial(v_reset)), h
    _run(x.device, *fwd_launch(x, v0, k, spikes, h, v_last, charge, decay_input, tau, v_threshold, v_reset))
    return spikes, v_last, h


def _fwd_outputs(x: Tensor, charge: str, save_h: bool) -> tuple[Tensor, Tensor, Tensor]:
    """Uninitialised (spikes, V[T], H) of neuron_fwd, in the layout of the input's step (real and fake alike)."""
    spikes = empty_steps(x)
    h = torch.empty_like(spikes, dtype=_saved_h_dtype(x.dtype, charge)) if save_h else x.new_empty(0)
    return spikes, _state(spikes), h


def _saved_h_dtype(dtype: torch.dtype, charge: str) -> torch.dtype:
    """The dtype of the saved H (snn::SavedH): the input's, float32 for PLIF."""
    return torch.float32 if charge == 'plif' else dtype


@neuron_fwd.register_fake
def _neuron_fwd_fake(x, v0, k, charge, decay_input, tau, v_threshold, v_reset, detach_reset, surrogate, alpha,
                     save_h):
    _check(x, v0, k, charge)
    return _fwd_outputs(x, charge, save_h)


@torch.library.custom_op('snnzoo::neuron_bwd', mutates_args=())
def neuron_bwd(grad_s: Optional[Tensor], grad_v: Optional[Tensor], h: Tensor, v0: Optional[Tensor],
               k: Optional[Tensor], dtype: torch.dtype, charge: str, decay_input: bool, tau: float, v_threshold: float,
               v_reset: Optional[float], detach_reset: bool, surrogate: int, alpha: float,
               need_grad_v0: bool) -> tuple[Tensor, Tensor, Tensor]:
    _check_bwd(h, v0, k, dtype, charge)
    grad_x, grad_v0, grad_k = _bwd_outputs(h, dtype, charge, need_grad_v0)
    h, grad_s = _in_layout(h, grad_x, h.dtype), _in_layout(grad_s, grad_x)
    state = _state(grad_x)
    grad_v, v0 = _in_layout(grad_v, state), _in_layout(v0, state)
    n, steps = math.prod(h.shape[1:]), h.shape[0]
    if steps == 0 or n == 0:
        if need_grad_v0:
            grad_v0.copy_(grad_v) if grad_v is not None else grad_v0.zero_()
        return grad_x, grad_v0, grad_k.zero_() if charge == 'plif' else grad_k
    # one float64 per block (at most one block per BLOCK neurons), zeros beyond the launch's grid
    partial_k = h.new_zeros(-(-n // BLOCK) if charge == 'plif' else 0, dtype=torch.float64)
    _run(h.device, *bwd_launch(grad_s, grad_v, h, v0, k, grad_x, grad_v0 if need_grad_v0 else None, partial_k,
                               charge, decay_input, tau, v_threshold, v_reset, detach_reset, surrogate, alpha))
    if charge == 'plif':
        grad_k.copy_(partial_k.sum())   # one partial per block, summed in a fixed order: deterministic
    return grad_x, grad_v0, grad_k


def _bwd_outputs(h: Tensor, dtype: torch.dtype, charge: str, need_grad_v0: bool) -> tuple[Tensor, Tensor, Tensor]:
    """Uninitialised (dL/dX, dL/dv0 or [0], dL/dk or [0]) of neuron_bwd, in the layout of H's step."""
    grad_x = empty_steps(h, dtype)
    grad_v0 = _state(grad_x) if need_grad_v0 else h.new_empty(0, dtype=torch.float32)
    return grad_x, grad_v0, h.new_empty(() if charge == 'plif' else 0, dtype=torch.float32)


@neuron_bwd.register_fake
def _neuron_bwd_fake(grad_s, grad_v, h, v0, k, dtype, charge, decay_input, tau, v_threshold, v_reset, detach_reset,
                     surrogate, alpha, need_grad_v0):
    _check_bwd(h, v0, k, dtype, charge)
    return _bwd_outputs(h, dtype, charge, need_grad_v0)


def _check_bwd(h: Tensor, v0: Optional[Tensor], k: Optional[Tensor], dtype: torch.dtype, charge: str) -> None:
    _check(h, v0, k, charge, dtype)
    if h.dtype != _saved_h_dtype(dtype, charge):
        raise ValueError(f"h must be the {_saved_h_dtype(dtype, charge)} H that neuron_fwd saved for {dtype} "
                         f"(charge {charge!r}), got {h.dtype}")


def _setup_context(ctx, inputs, output):
    x, v0, k, *options, save_h = inputs
    ctx.dtype, ctx.options, ctx.save_h = x.dtype, tuple(options), save_h
    ctx.save_for_backward(output[2], v0, k)
    ctx.mark_non_differentiable(output[2])
    ctx.set_materialize_grads(False)


def _backward(ctx, grad_s, grad_v, grad_h):
    if not ctx.save_h:
        raise RuntimeError("snnzoo::neuron_fwd ran with save_h=False, so it saved nothing to differentiate; "
                           "call it with save_h=True (snnzoo.cuda.neuron_multistep decides this itself)")
    h, v0, k = ctx.saved_tensors
    need_x, need_v0, need_k = ctx.needs_input_grad[:3]
    grad_x, grad_v0, grad_k = torch.ops.snnzoo.neuron_bwd(grad_s, grad_v, h, v0, k, ctx.dtype, *ctx.options,
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
