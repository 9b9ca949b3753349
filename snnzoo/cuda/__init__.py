"""Fused CUDA kernels for the multi-step LIF / IF / PLIF neurons, compiled with NVRTC through CuPy.

One launch runs the whole recurrence over T (forward, and backward through time) for every neuron option of
:mod:`snnzoo.layers.neuron`: LIF / IF / PLIF (with the gradient to PLIF's decay), hard and soft reset, decay_input,
detach_reset, the four surrogates, on float32 / float16 / bfloat16 tensors (stored in their dtype, computed in float32).
Forward saves only H in the input dtype. The kernels are the torch custom ops ``snnzoo::neuron_fwd`` /
``snnzoo::neuron_bwd`` (fake implementations and autograd registered, so ``torch.compile`` traces them), launched on
torch's current stream under a device guard.

This package imports nothing of snnzoo and does not import CuPy until a kernel runs (:mod:`.ops` registers the custom
ops when first needed).
"""
import importlib.util
import warnings
from typing import Optional

import torch

__all__ = ['is_available', 'unusable', 'usable_for_auto', 'require', 'neuron_multistep', 'empty_steps']

DTYPES = (torch.float32, torch.float16, torch.bfloat16)
_CUPY_INSTALLED = importlib.util.find_spec('cupy') is not None


def empty_steps(x: torch.Tensor, dtype: Optional[torch.dtype] = None) -> torch.Tensor:
    """An uninitialised ``[T, ...]`` tensor like ``x``: T outermost, each step dense in the layout of ``x[0]`` (e.g.
    channels-last frames; contiguous when that step is not dense). Both backends write their outputs into it."""
    dtype = x.dtype if dtype is None else dtype
    if x.shape[0] == 0:
        return x.new_empty(x.shape, dtype=dtype)
    step = torch.empty_like(x[0], dtype=dtype)
    return torch.empty_strided(x.shape, (step.numel(), *step.stride()), dtype=dtype, device=x.device)


def _cupy_installed() -> bool:
    return _CUPY_INSTALLED


def is_available(x: Optional[torch.Tensor] = None) -> bool:
    """True when the fused kernels can run here (CuPy installed, a CUDA device present), and can run ``x`` if given
    (a CUDA tensor of a supported dtype)."""
    if not (_cupy_installed() and torch.cuda.is_available()):
        return False
    return x is None or (x.is_cuda and x.dtype in DTYPES)


_PROBED: dict = {}
_WARNED: set = set()


@torch.compiler.assume_constant_result   # evaluated once when torch.compile traces, not traced into
def unusable(device: torch.device) -> Optional[str]:
    """Why the kernels cannot run on CUDA ``device`` although CuPy is installed (NVRTC missing or broken, a driver
    CuPy cannot use, ...), naming the fix; None when they can. Found once per device by compiling and loading one
    kernel (the result is cached, like the kernel)."""
    index = torch.device(device).index or 0
    if index not in _PROBED:
        from . import kernels
        try:
            kernels.function(kernels.variant_for('fwd', 'float32', 'lif', True, 0), index)
            _PROBED[index] = None
        except Exception as error:  # ImportError, NVRTCError, CUDADriverError, CompileError, RuntimeError, ...
            _PROBED[index] = (f"the fused CUDA kernels cannot run on cuda:{index}: {type(error).__name__}: "
                              f"{error}. Fix: install the CuPy build matching your CUDA driver (pip install "
                              f"'snnzoo[cuda]', or cupy-cuda12x for a CUDA 12 driver), or use backend='torch'")
    return _PROBED[index]


@torch.compiler.assume_constant_result
def usable_for_auto(device: torch.device) -> bool:
    """``backend='auto'``: whether the kernels run on CUDA ``device``; when CuPy is broken, say why (once) and let
    the torch backend run."""
    problem = unusable(device)
    if problem and problem not in _WARNED:
        _WARNED.add(problem)
        warnings.warn(f"backend='auto' uses the torch backend: {problem}", RuntimeWarning, stacklevel=2)
    return problem is None


def require(x: torch.Tensor) -> None:
    """Raise a clear error when ``backend='cupy'`` cannot run ``x``."""
    if not _cupy_installed():
        raise RuntimeError("backend='cupy' needs CuPy, which is not installed: pip install 'snnzoo[cuda]' (and run "
                           "on a CUDA tensor), or use backend='torch' (or 'auto', which falls back to torch)")
    if not x.is_cuda:
        raise RuntimeError(f"backend='cupy' runs fused CUDA kernels and needs a CUDA tensor, got one on {x.device}: "
                           f"move the model and input to a GPU (with CuPy: pip install 'snnzoo[cuda]'), or use "
                           f"backend='torch' (or 'auto', which falls back to torch)")
    if x.dtype not in DTYPES:
        raise TypeError(f"backend='cupy' runs float32, float16 and bfloat16 tensors, got {x.dtype}; use "
                        f"backend='torch' (or 'auto') for {x.dtype}")
    problem = unusable(x.device)
    if problem:
        raise RuntimeError(f"backend='cupy': {problem} (backend='auto' falls back to torch)")


def neuron_multistep(x: torch.Tensor, v0: Optional[torch.Tensor], k: Optional[torch.Tensor], cfg,
                     return_h: bool = False):
    """Run neuron ``cfg`` (a :class:`snnzoo.layers.neuron.NeuronConfig`) over ``x [T, ...]`` from ``v0 [...]`` (None:
    V_reset, or 0 for soft reset) with PLIF decay ``k`` (0-dim tensor, else None); return (spikes [T, ...], V[T]),
    with ``return_h`` also the saved potential H [T, ...] (empty without a gradient)."""
    require(x)
    from .ops import multistep
    return multistep(x, v0, k, cfg, return_h)
