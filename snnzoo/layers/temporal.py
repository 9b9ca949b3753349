"""Helpers for multi-step tensors ``[T, B, ...]``: applying stateless layers per step, and model input layouts and
checks.

Model input checks (every family's ``forward``): a NaN or infinite input raises :class:`NonFiniteInputError` on the CPU
(spiking networks would otherwise swallow it: NaN never crosses a threshold); on CUDA the check is an asynchronous
device assertion (no host synchronisation; like any device-side assert it ends the CUDA context, so training,
evaluation and ``snnzoo-energy`` check each batch on the host first, with the batch and sample named). Nothing is
checked while tracing, compiling or exporting. An input whose dtype differs from the parameters' (outside autocast)
raises a ``TypeError`` naming both; an empty batch (B = 0) gives an empty output of the right shape.
"""
from typing import Optional

import torch
import torch.nn as nn

__all__ = ['MultiStep', 'per_step', 'to_time_major', 'channels_last_frames', 'NonFiniteInputError', 'check_finite',
           'check_input_dtype', 'empty_batch_output']


class NonFiniteInputError(FloatingPointError):
    """An input (a model's, or a data batch) holds NaN or infinite values."""


def _symbolic(x: torch.Tensor) -> bool:
    """True while tracing, compiling or exporting, or for a tensor without data: no data-dependent check then."""
    return (x.device.type == 'meta' or torch.jit.is_tracing() or torch.compiler.is_compiling()
            or torch.compiler.is_exporting() or torch.onnx.is_in_onnx_export()
            or type(x) is not torch.Tensor and not isinstance(x, nn.Parameter))


def check_finite(x: torch.Tensor, what: str = 'model input') -> None:
    """Raise :class:`NonFiniteInputError` naming ``what`` and the first sample (dim 0) holding a NaN or inf; on CUDA an
    asynchronous device assertion instead (no host synchronisation); skipped while tracing / compiling."""
    if not x.is_floating_point() or _symbolic(x):
        return
    finite = torch.isfinite(x).all()
    if x.device.type == 'cuda':
        torch._assert_async(finite, f"{what} holds NaN or infinite values")
    elif x.device.type == 'cpu' and not finite:
        bad = ~torch.isfinite(x.reshape(len(x), -1)).all(1) if x.dim() and len(x) else torch.ones(1, dtype=torch.bool)
        index = int(bad.nonzero()[0, 0])
        raise NonFiniteInputError(f"{what} holds NaN or infinite values (first in sample {index} of "
                                  f"{len(x) if x.dim() else 1}): spiking neurons would silently ignore them; fix or "
                                  f"drop that sample (e.g. check the data's normalisation and files)")


def check_input_dtype(model: nn.Module, x: torch.Tensor) -> None:
    """A ``TypeError`` when ``x``'s floating dtype differs from the model's parameters (not under autocast)."""
    ref = next(model.parameters(), None)
    if (ref is None or not isinstance(x, torch.Tensor) or not x.is_floating_point() or x.dtype == ref.dtype
            or torch.is_autocast_enabled(x.device.type)):
        return
    raise TypeError(f"{type(model).__name__} has {ref.dtype} parameters but the input is {x.dtype}: cast the input "
                    f"(x.to({ref.dtype})) or the model (model.to({x.dtype}))")


def empty_batch_output(model: nn.Module, x: torch.Tensor, return_per_step: bool = False) -> torch.Tensor:
    """``model(x, return_per_step)`` for an empty batch ``x`` ([0, ...]): the output shape is found by running one
    sample on the meta device (no computation, no state change), the result is an empty tensor on ``x``'s device."""
    from torch.func import functional_call
    meta = {k: torch.empty_like(v, device='meta') for k, v in [*model.named_parameters(), *model.named_buffers()]}
    one = torch.empty((1, *x.shape[1:]), dtype=x.dtype, device='meta')
    shape = list(functional_call(model, meta, (one,), {'return_per_step': return_per_step}).shape)
    shape[1 if return_per_step else 0] = 0
    return torch.zeros(shape, dtype=next(model.parameters(), x).dtype, device=x.device)


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
    ``img_size`` (H, W), when given, is checked, and so are the values (:func:`check_finite`).
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
    check_finite(x, f"the input of {name}")
    if x.dim() == 4:
        return x.unsqueeze(0).expand(T, *x.shape)
    return x.transpose(0, 1)
