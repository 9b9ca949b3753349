"""Convolutional patch embedding of hierarchical spiking Transformers (QKFormer): a stem, then a downsampling
embedding before each later stage.

Both are a chain of conv stages (:class:`~snnzoo.layers.patch_embed.SpikingConvStage`: 3x3 conv, stride 1, padding 1,
no bias -> BatchNorm -> [MaxPool 3x3, stride 2, padding 1] -> LIF) plus a shortcut (:class:`SpikingShortcut`: 1x1 conv
with stride s, no bias -> BatchNorm -> LIF) whose stride s equals the pooling the chain applies after the shortcut's
input. The output is chain spikes + shortcut spikes (values in {0, 1, 2}). Convolutions, BatchNorms and pools act on
``[T*B, C, H, W]`` (channels-last on the CPU, see :func:`~snnzoo.layers.temporal.channels_last_frames`); the LIFs
(tau 2, hard reset to 0, detached reset) run over T. Input and output ``[T, B, C, H, W]`` (contiguous); any H, W works
(a pool and a stride-s conv both give ceil(H / s)).
"""
from functools import partial
from typing import Callable, Optional, Sequence

import torch
import torch.nn as nn

from .neuron import LIFNode
from .patch_embed import SpikingConvStage
from .temporal import channels_last_frames

__all__ = ['SpikingShortcut', 'SpikingConvStem', 'SpikingDownsample']

NeuronLayer = Callable[..., nn.Module]


class SpikingShortcut(nn.Module):
    """``LIF(BN(conv1x1(x)))`` with stride s: ``[T, B, in_chs, H, W] -> [T, B, out_chs, ceil(H/s), ceil(W/s)]``.

    Submodules ``conv``, ``bn``, ``lif``.
    """

    def __init__(self, in_chs: int, out_chs: int, stride: int = 1, neuron_layer: Optional[NeuronLayer] = None):
        super().__init__()
        self.conv = nn.Conv2d(in_chs, out_chs, kernel_size=1, stride=stride, bias=False)
        self.bn = nn.BatchNorm2d(out_chs)
        self.lif = (neuron_layer or partial(LIFNode, tau=2.0, detach_reset=True))()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        T, B = x.shape[:2]
        x = x.flatten(0, 1)
        if x.device.type == 'cpu' and self.conv.stride != (1, 1) and self.conv.in_channels < 8:
            # torch 2.14's CPU weight gradient of a strided 1x1 conv on channels-last input with 2-7 channels corrupts
            # the heap (e.g. QKFormer's stem shortcut at embed_dim=32): NCHW there
            x = x.contiguous()
        return self.lif(self.bn(self.conv(x)).unflatten(0, (T, B)))


class _ChainWithShortcut(nn.Module):
    """Conv stages with output channels ``channels`` (pooled where ``pool``) and a shortcut from the spikes of stage
    ``shortcut_from`` (-1: from the module's input) to the last stage's channels. Submodules ``stages.{i}``,
    ``shortcut``."""

    def __init__(self, in_chans: int, channels: Sequence[int], pool: Sequence[bool], shortcut_from: int,
                 neuron_layer: Optional[NeuronLayer] = None):
        super().__init__()
        if len(channels) != len(pool):
            raise ValueError("channels and pool need one entry per conv stage")
        if min(channels) < 1:
            raise ValueError(f"every conv stage needs at least one channel, got {list(channels)}: increase embed_dim")
        self.shortcut_from = shortcut_from
        self.stages = nn.ModuleList(
            SpikingConvStage(cin, cout, ('conv', 'bn', 'pool', 'lif') if pooled else ('conv', 'bn', 'lif'),
                             neuron_layer)
            for cin, cout, pooled in zip((in_chans, *channels[:-1]), channels, pool))
        res_in = in_chans if shortcut_from < 0 else channels[shortcut_from]
        self.shortcut = SpikingShortcut(res_in, channels[-1], 2 ** sum(map(bool, pool[shortcut_from + 1:])),
                                        neuron_layer)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 5:
            raise ValueError(f"{type(self).__name__} expects [T, B, C, H, W], got shape {tuple(x.shape)}")
        x = shortcut_in = channels_last_frames(x)
        for i, stage in enumerate(self.stages):
            x = stage(x)
            if i == self.shortcut_from:
                shortcut_in = x
        return (x + self.shortcut(shortcut_in)).contiguous()


class SpikingConvStem(_ChainWithShortcut):
    """The first patch embedding: conv stages ``in_chans -> channels[0] -> ... -> channels[-1]``, a MaxPool where
    ``pool[i]``, and the shortcut from the spikes of stage ``shortcut_from``. QKFormer's stems (E = stage-1 dim):

    - CIFAR:    channels (E/2, E),             pool (F, F),       shortcut_from 0 (no downsampling)
    - ImageNet: channels (E/2, E, E),          pool (T, T, F),    shortcut_from 0 (H/4)
    - DVS:      channels (E/8, E/4, E/2, E),   pool (F, T, T, T), shortcut_from 1 (H/8)

    ``[T, B, in_chans, H, W] -> [T, B, channels[-1], H / 2^(#pools), W / 2^(#pools)]`` (rounded up).
    """

    def __init__(self, in_chans: int, channels: Sequence[int], pool: Sequence[bool], shortcut_from: int = 0,
                 neuron_layer: Optional[NeuronLayer] = None):
        if not 0 <= shortcut_from < len(channels) - 1:
            raise ValueError(f"shortcut_from must index a conv stage before the last one, got {shortcut_from}")
        super().__init__(in_chans, channels, pool, shortcut_from, neuron_layer)


class SpikingDownsample(_ChainWithShortcut):
    """Patch embedding between stages: two conv stages ``in_dim -> dim -> dim``, one followed by the MaxPool
    (``pool_first``: the first, as in QKFormer's ImageNet model; else the second, as in its CIFAR and DVS models), and
    a 1x1 stride-2 shortcut from the input (the residual stream, not spikes).

    ``[T, B, in_dim, H, W] -> [T, B, dim, ceil(H/2), ceil(W/2)]``.
    """

    def __init__(self, in_dim: int, dim: int, pool_first: bool = False, neuron_layer: Optional[NeuronLayer] = None):
        super().__init__(in_dim, (dim, dim), (pool_first, not pool_first), -1, neuron_layer)
