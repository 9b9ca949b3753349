"""Fused CUDA kernels for the multi-step neurons, compiled with CuPy/NVRTC (imported lazily, never by ``import snnzoo``).

This module imports nothing of snnzoo at import time and does not import CuPy until a kernel is needed.
"""
import importlib.util

import torch

__all__ = ['is_available', 'require', 'neuron_multistep']

_FIX = ("install the kernels' dependency with pip install 'snnzoo[cuda]' and run on a CUDA tensor, "
        "or use backend='torch'")


def _cupy_installed() -> bool:
    return importlib.util.find_spec('cupy') is not None


def is_available() -> bool:
    """True when fused kernels can run here (CuPy installed and a CUDA device present)."""
    return _kernels_ready() and _cupy_installed() and torch.cuda.is_available()


def _kernels_ready() -> bool:
    return False


def require(x: torch.Tensor) -> None:
    """Raise a clear error when ``backend='cupy'`` cannot run ``x``."""
    if not _kernels_ready():
        raise RuntimeError("backend='cupy': the fused CuPy kernels are not part of this build of snnzoo yet; "
                           "use backend='torch' (or 'auto', which picks torch)")
    if not _cupy_installed():
        raise RuntimeError(f"backend='cupy' needs CuPy, which is not installed: {_FIX}")
    if not x.is_cuda:
        raise RuntimeError(f"backend='cupy' runs on CUDA tensors, got a tensor on {x.device}: move the model and "
                           f"input to a GPU, or use backend='torch'")


def neuron_multistep(x, v0, k, cfg):
    require(x)
    raise AssertionError('unreachable')
