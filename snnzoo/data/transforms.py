"""Transforms: timm's ``create_transform`` for static images, and frame transforms for event data.

``build_transforms(dataset, is_training, **timm_kwargs)`` fills timm's arguments (input size, mean/std, crop_pct,
interpolation, train crop scale/ratio) from the data set's :class:`snnzoo.data.DatasetInfo`; every timm argument
can be overridden (``auto_augment='rand-m9-n1-mstd0.4-inc1'``, ``re_prob=0.25``, ``hflip``, ``color_jitter`` ...).

``build_event_transforms(...)`` composes transforms of one sample's frames ``[T, C, H, W]`` (the same geometric
change for every time step): resize, horizontal flip, and :class:`EventTrivialAugment`, the one-random-op
augmentation of the Spikformer CIFAR10-DVS recipe.
"""
import math
from typing import Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torchvision.transforms import InterpolationMode, RandomErasing
from torchvision.transforms.v2 import functional as TF

__all__ = ['build_transforms', 'build_event_transforms', 'EventResize', 'EventHorizontalFlip', 'EventTrivialAugment']


def build_transforms(dataset: str, is_training: bool = False, **timm_kwargs):
    """timm's ``create_transform`` with the defaults of ``dataset`` (a name of :func:`snnzoo.data.list_datasets`
    whose items are images); ``timm_kwargs`` override them. Returns PIL image -> normalised tensor ``[C, H, W]``."""
    from timm.data import create_transform

    from .factory import dataset_info
    info = dataset_info(dataset)
    if info.kind != 'image':
        hint = ("use build_event_transforms" if info.kind == 'event'
                else "its items are already tensors: pass a tensor transform, or none")
        raise ValueError(f"build_transforms builds image transforms, but {dataset!r} holds {info.kind} data: {hint}")
    kwargs = dict(input_size=info.input_size, mean=info.mean, std=info.std, crop_pct=info.crop_pct,
                  interpolation=info.interpolation)
    if is_training:
        kwargs.update(scale=info.scale, ratio=info.ratio)
    kwargs.update(timm_kwargs)
    return create_transform(is_training=is_training, **kwargs)


class EventResize(torch.nn.Module):
    """Resize frames ``[T, C, H, W]`` to ``size`` (int or (H, W)) with ``F.interpolate`` (``mode``)."""

    def __init__(self, size: Union[int, Tuple[int, int]], mode: str = 'bilinear'):
        super().__init__()
        self.size = (size, size) if isinstance(size, int) else tuple(size)
        self.mode = mode

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        if tuple(frames.shape[-2:]) == self.size:
            return frames
        align = False if self.mode in ('bilinear', 'bicubic') else None
        return F.interpolate(frames, size=self.size, mode=self.mode, align_corners=align)

    def extra_repr(self) -> str:
        return f"size={self.size}, mode={self.mode!r}"


class EventHorizontalFlip(torch.nn.Module):
    """Flip all frames ``[T, C, H, W]`` left-right together with probability ``p``."""

    def __init__(self, p: float = 0.5):
        super().__init__()
        self.p = p

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        return frames.flip(-1) if torch.rand(()) < self.p else frames

    def extra_repr(self) -> str:
        return f"p={self.p}"


class EventTrivialAugment(torch.nn.Module):
    """Apply one geometric op drawn uniformly to all frames ``[T, C, H, W]`` (nearest interpolation, zero fill).

    Ops, each magnitude ``m`` drawn from ``bins`` evenly spaced levels with a random sign: identity; shear along x
    by ``degrees(m)``, ``m`` in [-0.3, 0.3]; translate along x or y by ``int(m)`` pixels, ``m`` in [-5, 5];
    rotate by ``m`` in [-30, 30] degrees; cutout (erase one square of 0.1%-11% of the area). These are the op set
    and ranges of the Spikformer CIFAR10-DVS recipe (its ``SNNAugmentWide``).
    """
    ops = ('identity', 'shear_x', 'translate_x', 'translate_y', 'rotate', 'cutout')

    def __init__(self, bins: int = 31, cutout_scale: Tuple[float, float] = (0.001, 0.11)):
        super().__init__()
        self.bins, self.cutout_scale = bins, cutout_scale
        self.cutout = RandomErasing(p=1.0, scale=cutout_scale, ratio=(1.0, 1.0), value=0)

    def _magnitude(self, limit: float) -> float:
        level = int(torch.randint(self.bins, ()))
        magnitude = -limit + 2 * limit * level / (self.bins - 1)
        return -magnitude if torch.randint(2, ()) else magnitude

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        op = self.ops[int(torch.randint(len(self.ops), ()))]
        nearest = InterpolationMode.NEAREST
        if op == 'shear_x':
            return TF.affine(frames, angle=0.0, translate=[0, 0], scale=1.0,
                             shear=[math.degrees(self._magnitude(0.3)), 0.0], interpolation=nearest)
        if op in ('translate_x', 'translate_y'):
            shift = int(self._magnitude(5.0))
            translate = [shift, 0] if op == 'translate_x' else [0, shift]
            return TF.affine(frames, angle=0.0, translate=translate, scale=1.0, shear=[0.0, 0.0],
                             interpolation=nearest)
        if op == 'rotate':
            return TF.rotate(frames, self._magnitude(30.0), interpolation=nearest)
        if op == 'cutout':
            return self.cutout(frames)
        return frames

    def extra_repr(self) -> str:
        return f"bins={self.bins}, cutout_scale={self.cutout_scale}"


def build_event_transforms(is_training: bool = False, img_size: Optional[Union[int, Sequence[int]]] = None,
                           resize_mode: str = 'bilinear', hflip: float = 0.0, trivial_augment: bool = False):
    """Frames ``[T, C, H, W]`` -> frames: resize to ``img_size`` (train and eval), then, when training, a flip
    with probability ``hflip`` and :class:`EventTrivialAugment`. Returns ``None`` when there is nothing to do."""
    layers = []
    if img_size is not None:
        layers.append(EventResize(img_size if isinstance(img_size, int) else tuple(img_size), resize_mode))
    if is_training and hflip > 0:
        layers.append(EventHorizontalFlip(hflip))
    if is_training and trivial_augment:
        layers.append(EventTrivialAugment())
    return torch.nn.Sequential(*layers) if layers else None
