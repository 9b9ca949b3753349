"""1x1 projections of channel-first tokens ``[M, C, N]``, stored as ``nn.Linear``, ``nn.Conv1d`` or ``nn.Conv2d``.

The original spiking Transformers write the same per-token affine map y = W x + b three ways (``nn.Linear`` on
``[M, N, C]``, ``Conv1d`` k=1 on ``[M, C, N]``, ``Conv2d`` 1x1 on ``[M, C, H, W]``); their weights differ only in
trailing singleton dims (``[out, in]``, ``[out, in, 1]``, ``[out, in, 1, 1]``). Building the original's module type
keeps its parameter shapes, so its checkpoints load unchanged; :func:`apply_projection` evaluates any of them on
``[M, C, N]`` as one ``conv1d`` with a view of the module's weight (on the CPU a 1x1 convolution is about 1.5x faster
than ``nn.Linear`` on transposed tokens; the module's own ``forward``, and hooks registered on it, are not called).
"""
import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ['PROJ_TYPES', 'create_projection', 'apply_projection']

PROJ_TYPES = ('linear', 'conv1d', 'conv2d')


def create_projection(proj_type: str, in_features: int, out_features: int, bias: bool = True) -> nn.Module:
    """A 1x1 projection ``in_features -> out_features`` as ``nn.Linear``, ``nn.Conv1d`` or ``nn.Conv2d``."""
    if proj_type == 'linear':
        return nn.Linear(in_features, out_features, bias=bias)
    if proj_type == 'conv1d':
        return nn.Conv1d(in_features, out_features, kernel_size=1, bias=bias)
    if proj_type == 'conv2d':
        return nn.Conv2d(in_features, out_features, kernel_size=1, bias=bias)
    raise ValueError(f"unknown projection type {proj_type!r}; valid types are {list(PROJ_TYPES)}")


def apply_projection(layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``W x + b`` per token for channel-first ``x [M, C, N]``; returns ``[M, out, N]``."""
    weight = layer.weight
    return F.conv1d(x, weight.reshape(weight.shape[0], weight.shape[1], 1), layer.bias)
