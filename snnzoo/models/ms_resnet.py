"""MS-ResNet: membrane-shortcut residual networks.

Hu et al., "Advancing Spiking Neural Networks towards Deep Residual Learning", IEEE TNNLS 2024 (arXiv:2112.08954);
numerically faithful to Ariande1/MS-ResNet (commit 7c5f006, ``models/MS_ResNet.py``: ``resnet18`` / ``resnet34`` =
``ResNet_origin_18``, ``resnet104`` = ``ResNet_104``). The original repository has ImageNet networks only. Blocks:
:class:`snnzoo.layers.residual.MSBasicBlock`.

The original's neuron (``mem = 0.25 mem (1 - spike) + x``, ``spike = mem > 0.5``, rectangle surrogate of width 1) is
snnzoo's :class:`~snnzoo.layers.LIFNode` with ``tau=4/3, decay_input=False, v_threshold=0.5, v_reset=0,
detach_reset=True, surrogate='rectangle'``. Its time-distributed BatchNorm3d (statistics over B, T, H, W) is a
BatchNorm2d over ``[T*B, C, H, W]``. The original's spike tensors are float32 (``ActFun`` returns ``.float()``), so
the gradient reaching each spike is rounded to float32 there; ``fp32_spike_grad=True`` (default) does the same. That
only matters in float64, where it makes the gradients agree with the original's to 1e-15 instead of 1e-8.

Differences, none of which changes the original's numbers: T and the input channels are arguments (the original reads
the module global ``time_window``), a static image's stem convolutions run once before the repeat, and the stages
are named ``layer1..4`` (:func:`checkpoint_filter_fn` maps the original keys).
"""
import re
from functools import partial
from typing import Sequence, Tuple, Union

import torch
import torch.nn as nn
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.models import generate_default_cfgs

from ..layers.neuron import LIFNode
from ..layers.residual import MSBasicBlock, ms_shortcut
from ..layers.temporal import to_time_major
from ._builder import build_snn_model
from ._heads import check_global_pool
from ._registry import register_model
from ._resnet_base import SpikingResNetBase

torch.fx.wrap('to_time_major')  # a leaf of FX graphs: input checks and layout choices are not traced

__all__ = ['MSResNet', 'checkpoint_filter_fn']

_STEMS = ('7x7', 'deep')


class _Float32Grad(torch.autograd.Function):
    """Identity whose backward rounds the incoming gradient to float32 (and back to its dtype)."""

    @staticmethod
    def forward(ctx, x):
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return grad.float().to(grad.dtype)


def _round_spike_grad(module: nn.Module, inputs, spikes: torch.Tensor) -> torch.Tensor:
    """Forward hook on a neuron: its float64 spikes pass the gradient rounded to float32, as the original's."""
    return _Float32Grad.apply(spikes) if spikes.dtype == torch.float64 and spikes.requires_grad else spikes


def _ms_neuron(backend: str, fp32_spike_grad: bool) -> LIFNode:
    """The original's ``mem_update``: LIF with decay 0.25 (tau 4/3), no input decay, V_th 0.5, hard reset to 0,
    detached reset, rectangle surrogate of width 1."""
    node = LIFNode(tau=4.0 / 3.0, decay_input=False, v_threshold=0.5, v_reset=0.0, detach_reset=True,
                   surrogate='rectangle', alpha=1.0, backend=backend)
    if fp32_spike_grad:
        node.register_forward_hook(_round_spike_grad)
    return node


class MSResNet(SpikingResNetBase):
    """MS-ResNet for static images.

    - stem ``'7x7'`` (ResNet-18/34): conv7x7/2 (no bias) -> BN; stem ``'deep'`` (ResNet-104): three conv3x3 with bias
      (the first with stride 2) and nothing between them -> BN. No neuron and no max-pool after the stem (the
      original builds a max-pool it never uses). A static image's stem convolutions run once, then the result is
      repeated T times and normalised over T*B.
    - four stages of :class:`MSBasicBlock` (64, 128, 256, 512 channels, all with stride 2: overall stride 32); the
      projection shortcut is conv1x1/2 -> BN, or with ``avg_down`` (ResNet-104) AvgPool 2x2 -> conv1x1 -> BN;
    - head: LIF -> global average pool -> mean over T -> dropout -> fc.

    BN weights start at 0.5 (the threshold), except the last BN of each residual branch (0).

    Args:
        layers: blocks per stage (4 counts).
        stem: ``'7x7'`` or ``'deep'``.
        avg_down: average-pool projection shortcuts (ResNet-104). They halve H and W at every stage, so the feature
            size entering each stage must be even (any input size divisible by 32 works).
        num_classes: classes; 0 makes ``forward`` return the pooled features ``[B, 512]``.
        T: time steps a static image is repeated for (event frames ``[B, T, C, H, W]`` keep their own T).
        in_chans: input channels.
        img_size: nominal input size (for the pretrained config); any size works (global pooling).
        drop_rate: dropout before ``fc``. The original ResNet-104 trains with 0.2 (``drop_rate=0.2``); the default 0
            makes ``model.train()`` deterministic.
        fp32_spike_grad: round the gradient reaching each spike to float32 like the original (only changes float64).
        global_pool: ``'avg'`` or ``''`` (``num_classes=0`` only: ``forward`` returns the unpooled features).
        backend: neuron backend, ``'auto'``, ``'torch'`` or ``'cupy'``.
    """

    def __init__(self, layers: Sequence[int] = (2, 2, 2, 2), stem: str = '7x7', avg_down: bool = False,
                 num_classes: int = 1000, T: int = 6, in_chans: int = 3,
                 img_size: Union[int, Tuple[int, int]] = 224, drop_rate: float = 0.0, fp32_spike_grad: bool = True,
                 global_pool: str = 'avg', backend: str = 'auto'):
        super().__init__()
        layers = tuple(int(d) for d in layers)
        if len(layers) != 4 or min(layers) < 1:
            raise ValueError(f"MSResNet: layers must be 4 block counts >= 1 (one per stage), got {list(layers)}")
        if stem not in _STEMS:
            raise ValueError(f"MSResNet: unknown stem {stem!r}; valid stems are {list(_STEMS)}")
        if T < 1:
            raise ValueError(f"MSResNet: T must be >= 1, got {T}")
        self.T = int(T)
        self.in_chans = in_chans
        self.img_size = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
        self.avg_down = avg_down
        self.num_classes = num_classes
        self.global_pool = check_global_pool(global_pool, num_classes, type(self).__name__)
        neuron = partial(_ms_neuron, backend, fp32_spike_grad)

        if stem == '7x7':
            self.conv1 = nn.Sequential(nn.Conv2d(in_chans, 64, 7, stride=2, padding=3, bias=False))
        else:
            self.conv1 = nn.Sequential(nn.Conv2d(in_chans, 64, 3, stride=2, padding=1),
                                       nn.Conv2d(64, 64, 3, padding=1), nn.Conv2d(64, 64, 3, padding=1))
        self.bn1 = nn.BatchNorm2d(64)
        nn.init.constant_(self.bn1.weight, 0.5)
        in_chs = 64
        self.feature_info = [dict(num_chs=64, reduction=2, module='bn1')]
        for i, (out_chs, depth) in enumerate(zip((64, 128, 256, 512), layers)):
            blocks = [MSBasicBlock(in_chs, out_chs, 2, ms_shortcut(in_chs, out_chs, 2, avg_down), neuron=neuron)]
            blocks += [MSBasicBlock(out_chs, out_chs, neuron=neuron) for _ in range(1, depth)]
            self.add_module(f'layer{i + 1}', nn.Sequential(*blocks))
            self.feature_info.append(dict(num_chs=out_chs, reduction=4 * 2 ** i, module=f'layer{i + 1}'))
            in_chs = out_chs
        self.final_sn = neuron()
        self.num_features = self.head_hidden_size = in_chs
        self.head_drop = nn.Dropout(drop_rate)
        self.fc = nn.Linear(in_chs, num_classes) if num_classes > 0 else nn.Identity()

    def _check_size(self, x: torch.Tensor) -> None:
        if not self.avg_down:
            return
        for size in x.shape[-2:]:
            s = (size - 1) // 2 + 1  # after the stride-2 stem
            for stage in range(1, 5):
                if s % 2:
                    raise ValueError(f"{type(self).__name__} with average-pool shortcuts needs an even feature size "
                                     f"entering every stage, but input {tuple(x.shape[-2:])} gives {s} at stage "
                                     f"{stage}; use an input size divisible by 32 (e.g. 224)")
                s //= 2

    def _stem(self, x: torch.Tensor) -> torch.Tensor:
        """Input -> stem membrane input ``[T, B, 64, H/2, W/2]``."""
        static = isinstance(x, torch.fx.Proxy) or torch.is_tensor(x) and x.dim() == 4  # FX graphs take images
        x = to_time_major(x, 1, self.in_chans, name=type(self).__name__)
        if not isinstance(x, torch.fx.Proxy):
            self._check_size(x)
        x = self.conv1(x.flatten(0, 1)).unflatten(0, x.shape[:2])
        if static:  # identical per step: convolve once, then repeat (the original convolves each copy)
            x = x.expand(self.T, -1, -1, -1, -1)
        return self.bn1(x.flatten(0, 1)).unflatten(0, x.shape[:2])

    def _final(self, x: torch.Tensor) -> torch.Tensor:
        """The last stage's membrane shortcut stream -> spikes of the final LIF ``[T, B, 512, H/32, W/32]``."""
        return self.final_sn(x)

    def _prune_final(self) -> None:
        self.final_sn = nn.Identity()



_KEY_RULES = (
    (re.compile(r'(^|\.)module\.'), r'\1'),                         # DDP prefix (test.py strips it too)
    (re.compile(r'^conv([2-5])_x\.'), lambda m: f'layer{int(m.group(1)) - 1}.'),  # conv2_x..conv5_x -> layer1..4
    (re.compile(r'\.residual_function\.1\.'), '.conv1.0.'),
    (re.compile(r'\.residual_function\.2\.bn\.'), '.conv1.1.'),
    (re.compile(r'\.residual_function\.4\.'), '.conv2.0.'),
    (re.compile(r'\.residual_function\.5\.bn\.'), '.conv2.1.'),
    (re.compile(r'\.shortcut\.(\d+)\.bn\.'), r'.shortcut.\1.'),
    (re.compile(r'^conv1\.\d+\.bn\.'), 'bn1.'),                       # the stem's BatchNorm (last in conv1)
)


def _map_key(key: str) -> str:
    for pattern, repl in _KEY_RULES:
        key = pattern.sub(repl, key)
    return key


def checkpoint_filter_fn(state_dict: dict, model: nn.Module) -> dict:
    """Map an original MS-ResNet state_dict (``conv2_x.0.residual_function.2.bn.weight``, ``conv1.1.bn.*``, possibly
    ``module.``-prefixed) to snnzoo's keys (``layer1.0.conv1.1.weight``, ``bn1.*``); snnzoo's own keys pass
    unchanged."""
    return {_map_key(k): v for k, v in state_dict.items()}


def _create_ms_resnet(variant: str, pretrained: bool = False, **kwargs) -> MSResNet:
    return build_snn_model(MSResNet, variant, pretrained, pretrained_filter_fn=checkpoint_filter_fn,
                           feature_cfg=dict(feature_cls='getter'), **kwargs)


def _cfg(**kwargs) -> dict:
    return {
        'num_classes': 1000, 'input_size': (3, 224, 224), 'pool_size': (7, 7), 'crop_pct': 0.875,
        'interpolation': 'bilinear', 'mean': IMAGENET_DEFAULT_MEAN, 'std': IMAGENET_DEFAULT_STD,
        'first_conv': 'conv1.0', 'classifier': 'fc', 'paper_ids': 'arXiv:2112.08954',
        'paper_name': 'Advancing Spiking Neural Networks towards Deep Residual Learning',
        'origin_url': 'https://github.com/Ariande1/MS-ResNet', **kwargs,
    }


default_cfgs = generate_default_cfgs({
    'ms_resnet18': _cfg(),
    'ms_resnet34': _cfg(),
    'ms_resnet104': _cfg(),
})


@register_model
def ms_resnet18(pretrained: bool = False, **kwargs) -> MSResNet:
    """MS-ResNet-18 ([2, 2, 2, 2]), ImageNet, T=6."""
    model_args = dict(layers=(2, 2, 2, 2))
    return _create_ms_resnet('ms_resnet18', pretrained, **dict(model_args, **kwargs))


@register_model
def ms_resnet34(pretrained: bool = False, **kwargs) -> MSResNet:
    """MS-ResNet-34 ([3, 4, 6, 3]), ImageNet, T=6."""
    model_args = dict(layers=(3, 4, 6, 3))
    return _create_ms_resnet('ms_resnet34', pretrained, **dict(model_args, **kwargs))


@register_model
def ms_resnet104(pretrained: bool = False, **kwargs) -> MSResNet:
    """MS-ResNet-104 ([3, 8, 32, 8], deep stem, average-pool shortcuts), ImageNet, T=6."""
    model_args = dict(layers=(3, 8, 32, 8), stem='deep', avg_down=True)
    return _create_ms_resnet('ms_resnet104', pretrained, **dict(model_args, **kwargs))
