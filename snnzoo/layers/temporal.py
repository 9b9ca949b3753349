"""Helpers for multi-step tensors ``[T, B, ...]``: applying stateless layers per step, and model input layouts."""
from typing import Optional

import torch
import torch.nn as nn

__all__ = ['MultiStep', 'per_step', 'to_time_major', 'channels_last_frames']


def per_step(x: torch.Tensor, *layers: nn.Module) -> torch.Tensor:
    """Apply stateless layers (conv, BN, pool) to ``[T, B, ...]`` through ``[T*B, ...]`` (BN statistics over T*B)."""
    T, B = x.shape[:2]
    x = x.flatten(0, 1)
    for layer in layers:
        x = layer(x)
    return x.unflatten(0, (T, B))


def channels_last_frames(x: torch.Tensor) -> torch.Tensor:
    """``[T, B, C, H, W]`` with every frame stored channels-last (C innermost) when on the CPU; the same values.

    Convolutional stems run on such frames: there oneDNN's convolutions and ATen's BatchNorm statistics and max-pooling
    are faster than on NCHW (2-10x for the BatchNorm and pooling of a 32x32 map); the neurons keep the layout. Other
    devices get ``x`` unchanged.
    """
    if x.device.type != 'cpu':
        return x
    return x.flatten(0, 1).contiguous(memory_format=torch.channels_last).unflatten(0, x.shape[:2])


class MultiStep(nn.Sequential):
    """Apply stateless layers (conv, BN, pooling, linear) to every time step at once.

    ``[T, B, ...] -> flatten to [T*B, ...] -> layers -> [T, B, ...]``; BatchNorm therefore normalises over T*B.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() < 3:
            raise ValueError(f"MultiStep expects [T, B, ...], got shape {tuple(x.shape)}")
        return per_step(x, *self)


def to_time_major(x: torch.Tensor, T: int, in_chans: int, img_size: Optional[tuple] = None,
                  name: str = 'model') -> torch.Tensor:
    """Model input to ``[T, B, C, H, W]``.

    Static images ``[B, C, H, W]`` are repeated T times (as the original implementations do); event frames
    ``[B, T', C, H, W]`` (the layout of DVS data loaders) are transposed and keep their own T'.
    ``img_size`` (H, W), when given, is checked.
    """
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} expects a tensor, got {type(x).__name__}")
    if x.dim() == 4:
        c = x.shape[1]
    elif x.dim() == 5:
        c = x.shape[2]
    else:
        raise ValueError(f"{name} expects static images [B, C, H, W] or event frames [B, T, C, H, W], "
                         f"got a tensor of rank {x.dim()} and shape {tuple(x.shape)}")
    if c != in_chans:
        hint = (" (for event frames the layout is [B, T, C, H, W]: time second, channels third)"
                if x.dim() == 5 else "")
        raise ValueError(f"{name} was built with in_chans={in_chans} but the input has {c} channels "
                         f"(shape {tuple(x.shape)}){hint}; build it with in_chans={c} or fix the input")
    if img_size is not None and tuple(x.shape[-2:]) != tuple(img_size):
        raise ValueError(f"{name} was built for {tuple(img_size)} inputs but got {tuple(x.shape[-2:])}; "
                         f"build it with img_size={tuple(x.shape[-2:])} or resize the input")
    if not x.is_floating_point():
        raise TypeError(f"{name} expects a floating-point input, got {x.dtype}")
    if x.dim() == 4:
        return x.unsqueeze(0).expand(T, *x.shape)
    return x.transpose(0, 1)
