"""Spiking residual blocks shared by the ResNet families: SEW-ResNet's spike-element-wise blocks and MS-ResNet's
membrane-shortcut block.

Every block maps ``[T, B, C_in, H, W] -> [T, B, C_out, H / stride, W / stride]``; convolutions and BatchNorm run on
the flattened ``[T*B, ...]`` tensor (:class:`~snnzoo.layers.temporal.MultiStep`, BatchNorm statistics over T and B).
A block receives ``neuron``, a zero-argument callable that builds one multi-step node (e.g.
``functools.partial(IFNode, detach_reset=True, surrogate='atan')``), so the families choose their neuron.

SEW (Fang et al. 2021, "Deep Residual Learning in Spiking Neural Networks"): the residual branch ends in a neuron,
and its spikes S are joined with the identity A (spikes, or the previous block's output) by ``connect_f``:

- ``'ADD'``:  S + A   (integer counts: the output is no longer binary)
- ``'AND'``:  S * A
- ``'IAND'``: (1 - S) * A

MS (Hu et al. 2021, "Advancing Spiking Neural Networks towards Deep Residual Learning"): pre-activation order
``neuron -> conv -> BN`` twice, added to the real-valued (membrane) shortcut; the block output is not spikes.
"""
from typing import Callable, Optional

import torch
import torch.nn as nn

from .temporal import MultiStep

__all__ = ['CONNECT_FUNCTIONS', 'check_connect_f', 'sew_connect', 'conv_bn', 'SEWBasicBlock', 'SEWBottleneck',
           'sew_downsample', 'MSBasicBlock', 'ms_shortcut']

CONNECT_FUNCTIONS = ('ADD', 'AND', 'IAND')

NeuronFactory = Callable[[], nn.Module]


def check_connect_f(connect_f: str) -> str:
    """``connect_f`` in canonical upper case; a clear error for anything else."""
    name = connect_f.upper() if isinstance(connect_f, str) else connect_f
    if name not in CONNECT_FUNCTIONS:
        raise ValueError(f"unknown SEW connect_f {connect_f!r}; valid choices are {list(CONNECT_FUNCTIONS)} "
                         f"(ADD: S + A, AND: S * A, IAND: (1 - S) * A)")
    return name


def sew_connect(spikes: torch.Tensor, identity: torch.Tensor, connect_f: str) -> torch.Tensor:
    """Spike-element-wise join of the residual spikes S with the identity A (``connect_f`` already checked)."""
    if connect_f == 'ADD':
        return spikes + identity
    if connect_f == 'AND':
        return spikes * identity
    return identity * (1.0 - spikes)


def conv_bn(in_chs: int, out_chs: int, kernel_size: int, stride: int = 1, groups: int = 1,
            bn_weight: float = 1.0) -> MultiStep:
    """``MultiStep(Conv2d(k, stride, padding k // 2, bias=False), BatchNorm2d)``: keys ``0.weight``, ``1.*``."""
    bn = nn.BatchNorm2d(out_chs)
    nn.init.constant_(bn.weight, bn_weight)
    return MultiStep(nn.Conv2d(in_chs, out_chs, kernel_size, stride=stride, padding=kernel_size // 2,
                               groups=groups, bias=False), bn)


def sew_downsample(in_chs: int, out_chs: int, stride: int, neuron: NeuronFactory) -> nn.Sequential:
    """SEW projection of the identity: conv1x1(stride) -> BN -> neuron, so the identity stays spikes."""
    return nn.Sequential(conv_bn(in_chs, out_chs, 1, stride), neuron())


class SEWBasicBlock(nn.Module):
    """SEW basic block: ``connect_f(SN(BN(conv3x3(SN(BN(conv3x3(x)))))), downsample(x) or x)``.

    ``in_chs -> mid_chs (stride) -> out_chs``; ``mid_chs`` defaults to ``out_chs`` (torchvision's BasicBlock).
    """
    expansion = 1

    def __init__(self, in_chs: int, out_chs: int, stride: int = 1, downsample: Optional[nn.Module] = None,
                 connect_f: str = 'ADD', *, neuron: NeuronFactory, mid_chs: Optional[int] = None):
        super().__init__()
        mid_chs = out_chs if mid_chs is None else mid_chs
        self.connect_f = check_connect_f(connect_f)
        self.conv1 = conv_bn(in_chs, mid_chs, 3, stride)
        self.sn1 = neuron()
        self.conv2 = conv_bn(mid_chs, out_chs, 3)
        self.sn2 = neuron()
        self.downsample = downsample

    def last_bn(self) -> nn.BatchNorm2d:
        return self.conv2[1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.sn2(self.conv2(self.sn1(self.conv1(x))))
        identity = x if self.downsample is None else self.downsample(x)
        return sew_connect(out, identity, self.connect_f)


class SEWBottleneck(nn.Module):
    """SEW bottleneck: conv1x1 -> BN -> SN -> conv3x3(stride, groups) -> BN -> SN -> conv1x1 -> BN -> SN, joined
    with the identity by ``connect_f``. Inner width ``int(planes * base_width / 64) * groups``, output
    ``4 * planes`` channels (torchvision semantics)."""
    expansion = 4

    def __init__(self, in_chs: int, planes: int, stride: int = 1, downsample: Optional[nn.Module] = None,
                 connect_f: str = 'ADD', *, neuron: NeuronFactory, groups: int = 1, base_width: int = 64):
        super().__init__()
        width = int(planes * (base_width / 64.0)) * groups
        self.connect_f = check_connect_f(connect_f)
        self.conv1 = conv_bn(in_chs, width, 1)
        self.sn1 = neuron()
        self.conv2 = conv_bn(width, width, 3, stride, groups)
        self.sn2 = neuron()
        self.conv3 = conv_bn(width, planes * self.expansion, 1)
        self.sn3 = neuron()
        self.downsample = downsample

    def last_bn(self) -> nn.BatchNorm2d:
        return self.conv3[1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.sn2(self.conv2(self.sn1(self.conv1(x))))
        out = self.sn3(self.conv3(out))
        identity = x if self.downsample is None else self.downsample(x)
        return sew_connect(out, identity, self.connect_f)


def ms_shortcut(in_chs: int, out_chs: int, stride: int, avg_down: bool = False) -> MultiStep:
    """MS-ResNet projection shortcut on the membrane: conv1x1(stride) -> BN, or with ``avg_down`` (ResNet-104)
    AvgPool(stride) -> conv1x1 -> BN. BN weights start at 0.5 (the firing threshold)."""
    if not avg_down:
        return conv_bn(in_chs, out_chs, 1, stride, bn_weight=0.5)
    proj = conv_bn(in_chs, out_chs, 1, bn_weight=0.5)
    return MultiStep(nn.AvgPool2d(stride, stride), *proj)


class MSBasicBlock(nn.Module):
    """MS-ResNet block (pre-activation, membrane shortcut): ``BN(conv3x3(SN(BN(conv3x3(SN(x)))))) + shortcut(x)``.

    Input and output are real-valued membrane potentials ``[T, B, C, H, W]``; the first BN's weight starts at 0.5
    (the threshold), the last one's at 0 (the branch starts as zero).
    """

    def __init__(self, in_chs: int, out_chs: int, stride: int = 1, shortcut: Optional[nn.Module] = None, *,
                 neuron: NeuronFactory):
        super().__init__()
        self.sn1 = neuron()
        self.conv1 = conv_bn(in_chs, out_chs, 3, stride, bn_weight=0.5)
        self.sn2 = neuron()
        self.conv2 = conv_bn(out_chs, out_chs, 3, bn_weight=0.0)
        self.shortcut = nn.Identity() if shortcut is None else shortcut

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv2(self.sn2(self.conv1(self.sn1(x))))
        return out + self.shortcut(x)
