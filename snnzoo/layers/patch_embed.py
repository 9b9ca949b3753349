"""Spiking patch splitting: the convolutional stems of Spikformer and Spikingformer, and their CML variants.

A stem maps images or event frames ``[T, B, C, H, W]`` to a grid of embeddings ``[T, B, D, H', W']`` with
H' = ceil(H / P) after log2(P) poolings (P = ``patch_size``; flattening the grid gives N = H' W' tokens). Every conv is
3x3, stride 1, padding 1, without bias, and followed by BatchNorm2d; every pool is MaxPool2d(3, stride 2, padding 1).
Convolutions, BatchNorms and pools act on ``[T*B, ...]`` (BatchNorm statistics over T, B, H, W); neurons run over T.
The stems compute on channels-last frames on the CPU (:func:`~snnzoo.layers.temporal.channels_last_frames`) and return
contiguous tensors.

The channel plan is in -> D/8 -> D/4 -> D/2 -> D, and the pools sit in the last log2(P) transitions between conv
stages (P = 4 for 32x32 CIFAR images, 16 for 128x128 DVS frames and 224x224 ImageNet images). The families differ in
where the neurons sit, and the CML variants (Zhou et al. 2023, "ConvBN-MaxPool-LIF") in the order of pool and neuron:

- Spikformer (:class:`SpikingPatchSplitting`), each stage ``conv -> BN -> LIF -> [pool]`` (pools the spikes);
  CML: ``conv -> BN -> [pool] -> LIF`` (pools the BN output, so the neuron sees the max of the membrane inputs).
- Spikingformer (:class:`SpikingTokenizer`), pre-activation: ``conv -> BN``, then per stage
  ``LIF -> [pool] -> conv -> BN``; CML: ``conv -> BN -> [pool]``, then ``LIF -> conv -> BN -> [pool]``.
"""
import math
from functools import partial
from typing import Callable, Optional, Sequence

import torch
import torch.nn as nn

from .neuron import LIFNode
from .temporal import channels_last_frames

__all__ = ['SpikingConvStage', 'SpikingPatchSplitting', 'SpikingTokenizer', 'pooled_transitions']

STAGE_OPS = ('conv', 'bn', 'lif', 'pool')

NeuronLayer = Callable[..., nn.Module]


def pooled_transitions(num_transitions: int, patch_size: int) -> list:
    """Which of ``num_transitions`` stage transitions hold a max-pool: the last log2(``patch_size``)."""
    num_pools = int(math.log2(patch_size)) if isinstance(patch_size, int) and patch_size > 0 else -1
    if num_pools < 0 or 2 ** num_pools != patch_size or num_pools > num_transitions:
        valid = [2 ** i for i in range(num_transitions + 1)]
        raise ValueError(f"patch_size must be one of {valid} (each pooling stage halves the size), got {patch_size!r}")
    return [i >= num_transitions - num_pools for i in range(num_transitions)]


class SpikingConvStage(nn.Module):
    """A 3x3 conv + BatchNorm2d stage with an optional neuron and max-pool, applied in ``order``.

    ``order`` lists the ops among ``'conv', 'bn', 'lif', 'pool'`` (conv and bn required), e.g.
    ``('conv', 'bn', 'lif', 'pool')``. Input ``[T, B, in_chs, H, W]``, output ``[T, B, out_chs, H', W']``
    (H' = ceil(H / 2) with a pool). Submodules ``conv``, ``bn``, and ``lif`` / ``pool`` when used.
    ``neuron_layer`` builds the neuron (default: LIF with tau 2 and detached reset, as in the originals).
    """

    def __init__(self, in_chs: int, out_chs: int, order: Sequence[str] = ('conv', 'bn', 'lif'),
                 neuron_layer: Optional[NeuronLayer] = None):
        super().__init__()
        order = tuple(order)
        if (len(set(order)) != len(order) or not set(order) <= set(STAGE_OPS)
                or 'conv' not in order or 'bn' not in order):
            raise ValueError(f"order must list 'conv', 'bn' and optionally 'lif', 'pool' once each, got {order}")
        self.order = order
        self.conv = nn.Conv2d(in_chs, out_chs, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(out_chs)
        if 'lif' in order:
            self.lif = (neuron_layer or partial(LIFNode, tau=2.0, detach_reset=True))()
        if 'pool' in order:
            self.pool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        T, B = x.shape[:2]
        x = x.flatten(0, 1)
        for op in self.order:
            if op == 'lif':
                x = self.lif(x.unflatten(0, (T, B))).flatten(0, 1)
            else:
                x = getattr(self, op)(x)
        return x.unflatten(0, (T, B))

    def extra_repr(self) -> str:
        return 'order=' + '-'.join(self.order)


def _stem_channels(embed_dim: int, num: int) -> list:
    if not isinstance(embed_dim, int) or embed_dim < 8:
        raise ValueError(f"embed_dim must be an int >= 8 (the stem starts with embed_dim // 8 channels), "
                         f"got {embed_dim!r}")
    return [embed_dim // 8, embed_dim // 4, embed_dim // 2, embed_dim, embed_dim][:num]


class SpikingPatchSplitting(nn.Module):
    """Spikformer's spiking patch splitting (SPS) with its relative position embedding (RPE).

    Four stages in -> D/8 -> D/4 -> D/2 -> D, each ``conv -> BN -> LIF`` with a pool after the neuron in the last
    log2(P) stages (``cml=True``: the pool sits between BN and LIF). With S the last stage's spikes,
    ``out = S + LIF(BN(conv3x3(S)))`` (the RPE branch, values in {0, 1, 2}).
    ``[T, B, in_chans, H, W] -> [T, B, D, H / P, W / P]``. Submodules ``stages.{0..3}``, ``rpe``.
    """

    def __init__(self, in_chans: int = 3, embed_dim: int = 256, patch_size: int = 16, cml: bool = False,
                 neuron_layer: Optional[NeuronLayer] = None):
        super().__init__()
        channels = _stem_channels(embed_dim, 4)
        pooled = pooled_transitions(4, patch_size)
        stages = []
        for cin, cout, pool in zip([in_chans] + channels[:-1], channels, pooled):
            if not pool:
                order = ('conv', 'bn', 'lif')
            else:
                order = ('conv', 'bn', 'pool', 'lif') if cml else ('conv', 'bn', 'lif', 'pool')
            stages.append(SpikingConvStage(cin, cout, order, neuron_layer))
        self.stages = nn.Sequential(*stages)
        self.rpe = SpikingConvStage(embed_dim, embed_dim, ('conv', 'bn', 'lif'), neuron_layer)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stages(channels_last_frames(x))
        return (x + self.rpe(x)).contiguous()


class SpikingTokenizer(nn.Module):
    """Spikingformer's spiking tokenizer (pre-activation: every conv sees spikes except the first).

    ``conv -> BN`` on the input (in -> D/8), then four stages ``LIF -> [pool] -> conv -> BN`` (D/8 -> D/4 -> D/2 -> D
    -> D), pools in the last log2(P) transitions (``cml=True``: the pool follows the BN of the stage before the
    transition, ahead of the next neuron). The output is the last BatchNorm's real-valued output
    ``[T, B, D, H / P, W / P]``. Submodules ``stages.{0..4}``.
    """

    def __init__(self, in_chans: int = 3, embed_dim: int = 256, patch_size: int = 16, cml: bool = False,
                 neuron_layer: Optional[NeuronLayer] = None):
        super().__init__()
        channels = _stem_channels(embed_dim, 5)
        pooled = pooled_transitions(4, patch_size) + [False]
        stages = []
        for i, (cin, cout) in enumerate(zip([in_chans] + channels[:-1], channels)):
            order = ['lif'] if i > 0 else []
            if not cml and i > 0 and pooled[i - 1]:
                order.append('pool')
            order += ['conv', 'bn']
            if cml and pooled[i]:
                order.append('pool')
            stages.append(SpikingConvStage(cin, cout, order, neuron_layer))
        self.stages = nn.Sequential(*stages)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.stages(channels_last_frames(x)).contiguous()
