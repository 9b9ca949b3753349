"""SEW-ResNet: spike-element-wise residual networks.

Fang et al., "Deep Residual Learning in Spiking Neural Networks", NeurIPS 2021 (arXiv:2102.04159); numerically
faithful to fangwei123456/Spike-Element-Wise-ResNet (commit cfc547c): ``imagenet/sew_resnet.py`` (``sew_resnet18`` ...
``sew_resnet152``) and the DVS networks of ``dvsgesture/smodels.py`` / ``cifar10dvs/smodels.py``
(``sew_resnet_gesture``, ``sew_resnet_cifar10dvs``). Blocks: :mod:`snnzoo.layers.residual`.

Differences from the original, none of which changes its numbers: the neurons are stateless (no ``reset_net``),
``connect_f`` is checked when the model is built, ``in_chans`` / ``img_size`` / ``T`` are arguments, and the DVS
networks' stages are named modules (``stages.<i>.proj / blocks / pool``) instead of one flat list;
:func:`checkpoint_filter_fn` maps the original keys (both SpikingJelly ``SeqToANNContainer`` layouts, with and
without ``.module``). The DVS networks' PLIF keeps the original's ``w`` of shape ``[1]``.

On the CPU the ImageNet networks run their stem and first two stages on channels-last frames
(:func:`~snnzoo.layers.temporal.channels_last_frames`): the stem's max-pool and the BatchNorm statistics of the
large maps are several times faster there, and a training step of SEW-ResNet-18 about 5% faster (64x64 and 224x224
inputs; from the third stage on, with 256-512 channels on small maps, NCHW is as fast or faster).
"""
import re
from functools import partial
from typing import List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.models import generate_default_cfgs
from timm.models._features import feature_take_indices

from ..layers.neuron import IFNode, ParametricLIFNode
from ..layers.residual import SEWBasicBlock, SEWBottleneck, check_connect_f, conv_bn, sew_downsample
from ..layers.temporal import MultiStep, channels_last_frames, to_time_major
from ._builder import build_snn_model
from ._heads import check_global_pool, pooled_head, unpooled
from ._registry import register_model
from ._resnet_base import SpikingResNetBase

torch.fx.wrap('channels_last_frames')  # a leaf of FX graphs: input checks and layout choices are not traced
torch.fx.wrap('to_time_major')

__all__ = ['SEWResNet', 'SEWResNetDVS', 'checkpoint_filter_fn']

_BLOCKS = {'basic': SEWBasicBlock, 'bottleneck': SEWBottleneck}


def _as_pair(size) -> Tuple[int, int]:
    return (int(size), int(size)) if isinstance(size, int) else tuple(int(s) for s in size)


def _check_layers(layers: Sequence[int], n: int, name: str) -> Tuple[int, ...]:
    layers = tuple(int(d) for d in layers)
    if len(layers) != n or min(layers) < 1:
        raise ValueError(f"{name}: layers must be {n} block counts >= 1 (one per stage), got {list(layers)}")
    return layers


class SEWResNet(SpikingResNetBase):
    """SEW-ResNet for static images (ImageNet layout).

    - stem: conv7x7/2 -> BN on the image ONCE, repeated T times (event frames ``[B, T, C, H, W]``: per step) ->
      IF -> max-pool 3x3/2 of the spikes;
    - four stages of SEW blocks (planes 64, 128, 256, 512; strides 1, 2, 2, 2); a projection (when the shape changes)
      is conv1x1 -> BN -> IF, so the identity stays spikes (with ADD the blocks output integer spike counts);
    - head: global average pool -> mean over T -> dropout -> fc.

    Neurons: IF, V_th = 1, hard reset to 0, detached reset, ATan surrogate (alpha 2) — the original's
    ``cext_neuron.MultiStepIFNode(detach_reset=True)``.

    Args:
        block: ``'basic'`` (ResNet-18/34) or ``'bottleneck'`` (ResNet-50/101/152).
        layers: blocks per stage (4 counts).
        num_classes: classes; 0 makes ``forward`` return the pooled features ``[B, num_features]``.
        T: time steps a static image is repeated for (event frames keep their own T).
        connect_f: ``'ADD'`` (S + A), ``'AND'`` (S * A) or ``'IAND'`` ((1 - S) * A).
        in_chans: input channels.
        img_size: nominal input size (for the pretrained config); any size works (global pooling).
        groups, width_per_group: torchvision's ResNeXt / wide-ResNet options (bottleneck only).
        zero_init_residual: zero each block's last BN weight (and, for AND, set its bias to 1), as the original.
        drop_rate: dropout before ``fc`` (the original has none).
        global_pool: ``'avg'`` or ``''`` (``num_classes=0`` only: ``forward`` returns the unpooled features).
        backend: neuron backend, ``'auto'``, ``'torch'`` or ``'cupy'``.
    """

    def __init__(self, block: str = 'basic', layers: Sequence[int] = (2, 2, 2, 2), num_classes: int = 1000,
                 T: int = 4, connect_f: str = 'ADD', in_chans: int = 3, img_size: Union[int, Tuple[int, int]] = 224,
                 groups: int = 1, width_per_group: int = 64, zero_init_residual: bool = False, drop_rate: float = 0.0,
                 global_pool: str = 'avg', backend: str = 'auto'):
        super().__init__()
        if block not in _BLOCKS:
            raise ValueError(f"SEWResNet: unknown block {block!r}; valid blocks are {list(_BLOCKS)}")
        if block == 'basic' and (groups != 1 or width_per_group != 64):
            raise ValueError("SEWResNet: the basic block supports only groups=1 and width_per_group=64; "
                             "use a bottleneck model (sew_resnet50 and up) for ResNeXt / wide variants")
        if T < 1:
            raise ValueError(f"SEWResNet: T must be >= 1, got {T}")
        layers = _check_layers(layers, 4, 'SEWResNet')
        block_cls = _BLOCKS[block]
        self.T = int(T)
        self.connect_f = check_connect_f(connect_f)
        self.in_chans = in_chans
        self.img_size = _as_pair(img_size)
        self.num_classes = num_classes
        self.global_pool = check_global_pool(global_pool, num_classes, type(self).__name__)
        neuron = partial(IFNode, v_threshold=1.0, v_reset=0.0, detach_reset=True, surrogate='atan', alpha=2.0,
                         backend=backend)

        self.conv1 = nn.Conv2d(in_chans, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.sn1 = neuron()
        self.maxpool = MultiStep(nn.MaxPool2d(kernel_size=3, stride=2, padding=1))
        in_chs = 64
        self.feature_info = [dict(num_chs=64, reduction=2, module='sn1')]
        for i, (planes, depth, stride) in enumerate(zip((64, 128, 256, 512), layers, (1, 2, 2, 2))):
            out_chs = planes * block_cls.expansion
            downsample = sew_downsample(in_chs, out_chs, stride, neuron) if stride != 1 or in_chs != out_chs else None
            extra = {} if block == 'basic' else dict(groups=groups, base_width=width_per_group)
            blocks = [block_cls(in_chs, planes, stride, downsample, self.connect_f, neuron=neuron, **extra)]
            blocks += [block_cls(out_chs, planes, 1, None, self.connect_f, neuron=neuron, **extra)
                       for _ in range(1, depth)]
            self.add_module(f'layer{i + 1}', nn.Sequential(*blocks))
            self.feature_info.append(dict(num_chs=out_chs, reduction=4 * 2 ** i, module=f'layer{i + 1}'))
            in_chs = out_chs
        self.num_features = self.head_hidden_size = in_chs
        self.head_drop = nn.Dropout(drop_rate)
        self.fc = nn.Linear(in_chs, num_classes) if num_classes > 0 else nn.Identity()

        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode='fan_out', nonlinearity='relu')
        if zero_init_residual:
            for m in self.modules():
                if isinstance(m, (SEWBasicBlock, SEWBottleneck)):
                    nn.init.zeros_(m.last_bn().weight)
                    if self.connect_f == 'AND':
                        nn.init.ones_(m.last_bn().bias)

    def _stem(self, x: torch.Tensor) -> torch.Tensor:
        """Input -> stem spikes ``[T, B, 64, H/2, W/2]`` (before the max-pool)."""
        static = isinstance(x, torch.fx.Proxy) or torch.is_tensor(x) and x.dim() == 4  # FX graphs take images
        x = channels_last_frames(to_time_major(x, 1, self.in_chans, name=type(self).__name__))
        x = self.bn1(self.conv1(x.flatten(0, 1))).unflatten(0, x.shape[:2])
        if static:  # the original computes conv1 + bn1 once on the image and then repeats it
            x = x.expand(self.T, -1, -1, -1, -1)
        return self.sn1(x)

    def _post_stem(self, x: torch.Tensor) -> torch.Tensor:
        return self.maxpool(x)

    def _prune_post_stem(self) -> None:
        self.maxpool = nn.Identity()

    def _stage_input(self, index: int, x: torch.Tensor) -> torch.Tensor:
        """Stages 3-4 run on NCHW frames: their large 3x3 weights would be re-laid for channels-last on every call."""
        return x.contiguous() if index == 3 else x


class _PLIFNode(ParametricLIFNode):
    """PLIF whose learnt ``w`` has shape ``[1]`` like SpikingJelly 2958519's (the original checkpoints' layout)."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.w = nn.Parameter(self.w.detach().reshape(1))

    def decay(self) -> torch.Tensor:
        return self.w.sigmoid().reshape(())


class _DVSStage(nn.Module):
    """One stage of the SEW DVS networks: [conv1x1 -> BN -> PLIF when the width changes] -> SEW basic block(s) at
    stride 1 without downsample -> max-pool 2x2."""

    def __init__(self, in_chs: int, out_chs: int, depth: int, connect_f: str, neuron):
        super().__init__()
        self.proj = nn.Sequential(conv_bn(in_chs, out_chs, 1), neuron()) if in_chs != out_chs else nn.Identity()
        self.blocks = nn.Sequential(*[SEWBasicBlock(out_chs, out_chs, connect_f=connect_f, neuron=neuron)
                                      for _ in range(depth)])
        self.pool = MultiStep(nn.MaxPool2d(2, 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.blocks(self.proj(x)))


class SEWResNetDVS(SpikingResNetBase):
    """The SEW networks for 128x128 event frames (DVS128 Gesture, CIFAR10-DVS) of the original ``smodels.py``.

    Stages (``channels`` / ``layers``): when the width changes a conv1x1 -> BN -> PLIF unit, then SEW basic blocks
    (two conv3x3 -> BN -> PLIF units joined with the block input by ``connect_f``; no downsample), then a 2x2
    max-pool. Head: flatten ``[T, B, C*h*w]`` -> mean over T -> dropout -> fc (``h = H / 2^stages``).

    Neurons: PLIF with a learnt decay sigmoid(w) (init_tau 2, one scalar per layer), V_th = 1, hard reset to 0,
    detached reset, ATan surrogate (alpha 2) — the original's ``cext.neuron.MultiStepParametricLIFNode(init_tau=2.0,
    detach_reset=True)``. (The original CUDA kernel's ``w`` gradient was incomplete, see the reference notes; snnzoo
    computes the exact one.)

    Args:
        channels: width of each stage (DVS Gesture: 7 x 32; CIFAR10-DVS: 4 x 64, 3 x 128).
        layers: SEW blocks per stage (default one each).
        num_classes: classes; 0 makes ``forward`` return the pooled features.
        T: time steps a static input is repeated for (event frames ``[B, T, C, H, W]`` keep their own T; the
            papers use T=16).
        in_chans: input channels (2 polarities).
        img_size: input size; the flattened head depends on it.
        connect_f: ``'ADD'``, ``'AND'`` or ``'IAND'``.
        drop_rate: dropout before ``fc`` (the original has none).
        global_pool: ``'avg'`` (the flattening head above; the name is timm's) or ``''`` (``num_classes=0`` only:
            ``forward`` returns the unpooled features ``[B, C_last, h, w]``).
        backend: neuron backend.

    ``num_features`` is the last stage's width C_last (the channels of ``forward_features``), ``head_hidden_size`` the
    flattened C_last * h * w the classifier reads. Feature levels (timm's feature API): stage 0 before its max-pool
    (stride 1), then every stage's output (strides 2, 4, ...), so that a 2-stage net has three levels.
    """

    def __init__(self, channels: Sequence[int] = (32,) * 7, layers: Optional[Sequence[int]] = None,
                 num_classes: int = 11, T: int = 16, in_chans: int = 2,
                 img_size: Union[int, Tuple[int, int]] = 128, connect_f: str = 'ADD', drop_rate: float = 0.0,
                 global_pool: str = 'avg', backend: str = 'auto'):
        super().__init__()
        channels = tuple(int(c) for c in channels)
        layers = _check_layers((1,) * len(channels) if layers is None else layers, len(channels), 'SEWResNetDVS')
        if T < 1:
            raise ValueError(f"SEWResNetDVS: T must be >= 1, got {T}")
        self.T = int(T)
        self.connect_f = check_connect_f(connect_f)
        self.in_chans = in_chans
        self.img_size = _as_pair(img_size)
        self.num_classes = num_classes
        self.global_pool = check_global_pool(global_pool, num_classes, type(self).__name__)
        h, w = (s // 2 ** len(channels) for s in self.img_size)
        if h < 1 or w < 1:
            raise ValueError(f"SEWResNetDVS: img_size {self.img_size} is too small for {len(channels)} stages of "
                             f"2x2 max-pooling (needs at least {2 ** len(channels)} pixels per side)")
        neuron = partial(_PLIFNode, init_tau=2.0, v_threshold=1.0, v_reset=0.0, detach_reset=True,
                         surrogate='atan', alpha=2.0, backend=backend)
        stages, in_chs = [], in_chans
        self.feature_info = [dict(num_chs=channels[0], reduction=1, module='stages.0.blocks')]
        for i, (out_chs, depth) in enumerate(zip(channels, layers)):
            stages.append(_DVSStage(in_chs, out_chs, depth, self.connect_f, neuron))
            self.feature_info.append(dict(num_chs=out_chs, reduction=2 ** (i + 1), module=f'stages.{i}'))
            in_chs = out_chs
        self.stages = nn.Sequential(*stages)
        self.num_features, self.head_hidden_size = in_chs, in_chs * h * w
        self.head_drop = nn.Dropout(drop_rate)
        self.fc = nn.Linear(self.head_hidden_size, num_classes) if num_classes > 0 else nn.Identity()

    def forward_stream(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, T, C, H, W]`` (or a static ``[B, C, H, W]``, repeated T times) -> ``[T, B, C_last, h, w]``."""
        x = to_time_major(x, self.T, self.in_chans, self.img_size, name=type(self).__name__)
        return self.stages(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False, return_per_step: bool = False) -> torch.Tensor:
        """``[T, B, C, h, w]`` (or its mean over T ``[B, C, h, w]``) -> logits ``[B, num_classes]`` (``[T, B,
        num_classes]`` with ``return_per_step``); ``global_pool=''``: the unpooled features."""
        if not self.global_pool:
            return unpooled(x, return_per_step)
        return pooled_head(x.flatten(-3), self.head_drop, self.fc, pre_logits, return_per_step)

    def _stem(self, x: torch.Tensor) -> torch.Tensor:
        """Input -> feature 0: stage 0 before its max-pool (full resolution); the pool is the next "stage", so feature
        i >= 1 is stage i - 1's output."""
        stage = self.stages[0]
        return stage.blocks(stage.proj(to_time_major(x, self.T, self.in_chans, self.img_size,
                                                     name=type(self).__name__)))

    def _stages(self) -> List[nn.Module]:
        return [self.stages[0].pool] + list(self.stages)[1:]

    def prune_intermediate_layers(self, indices: Union[int, List[int]] = 1, prune_norm: bool = False,
                                  prune_head: bool = True) -> List[int]:
        take_indices, max_index = feature_take_indices(len(self.feature_info), indices)
        self.stages = self.stages[:max(max_index, 1)]
        if max_index == 0:
            self.stages[0].pool = nn.Identity()
        self.feature_info = self.feature_info[:max_index + 1]
        if prune_head:
            self.reset_classifier(0)
        return take_indices


def _dvs_key_map(model: SEWResNetDVS) -> dict:
    """Original ``conv.<i>...`` / ``out.`` prefixes (flat nn.Sequential: [conv1x1 unit], SEWBlock, pool per stage)
    -> snnzoo's ``stages.<s>...`` / ``fc.``."""
    prefixes, i = {'out.': 'fc.'}, 0
    for s, stage in enumerate(model.stages):
        if not isinstance(stage.proj, nn.Identity):
            prefixes[f'conv.{i}.0.'] = f'stages.{s}.proj.0.'
            prefixes[f'conv.{i}.1.'] = f'stages.{s}.proj.1.'
            i += 1
        for b in range(len(stage.blocks)):
            for unit, (conv, sn) in enumerate((('conv1', 'sn1'), ('conv2', 'sn2'))):
                prefixes[f'conv.{i}.conv.{unit}.0.'] = f'stages.{s}.blocks.{b}.{conv}.'
                prefixes[f'conv.{i}.conv.{unit}.1.'] = f'stages.{s}.blocks.{b}.{sn}.'
            i += 1
        i += 1  # the max-pool
    return prefixes


def checkpoint_filter_fn(state_dict: dict, model: nn.Module) -> dict:
    """Map an original Spike-Element-Wise-ResNet state_dict to snnzoo's keys (snnzoo's own keys pass unchanged).

    ImageNet nets: SpikingJelly 2958519's ``SeqToANNContainer`` stores its children under ``.module`` (``layer1.0.
    conv1.module.0.weight``); newer SpikingJelly omits it; snnzoo's keys are the latter. DVS nets: the flat
    ``conv.<i>`` list and ``out`` map to ``stages.<s>.{proj, blocks.<b>.{conv1, sn1, conv2, sn2}}`` and ``fc``.
    """
    prefixes = _dvs_key_map(model) if isinstance(model, SEWResNetDVS) else {}
    out = {}
    for key, value in state_dict.items():
        key = re.sub(r'(^|\.)module\.', r'\1', key)
        for old, new in prefixes.items():
            if key.startswith(old):
                key = new + key[len(old):]
                break
        out[key] = value
    return out


def _create_sew_resnet(variant: str, pretrained: bool = False, **kwargs) -> SEWResNet:
    return build_snn_model(SEWResNet, variant, pretrained, pretrained_filter_fn=checkpoint_filter_fn,
                           feature_cfg=dict(feature_cls='getter'), **kwargs)


def _create_sew_resnet_dvs(variant: str, pretrained: bool = False, **kwargs) -> SEWResNetDVS:
    n_levels = 1 + len(kwargs.get('channels', ()))
    return build_snn_model(SEWResNetDVS, variant, pretrained, pretrained_filter_fn=checkpoint_filter_fn,
                           feature_cfg=dict(feature_cls='getter', out_indices=tuple(range(n_levels))), **kwargs)


def _cfg(**kwargs) -> dict:
    return {
        'num_classes': 1000, 'input_size': (3, 224, 224), 'pool_size': (7, 7), 'crop_pct': 0.875,
        'interpolation': 'bilinear', 'mean': IMAGENET_DEFAULT_MEAN, 'std': IMAGENET_DEFAULT_STD,
        'first_conv': 'conv1', 'classifier': 'fc', 'paper_ids': 'arXiv:2102.04159',
        'paper_name': 'Deep Residual Learning in Spiking Neural Networks',
        'origin_url': 'https://github.com/fangwei123456/Spike-Element-Wise-ResNet', **kwargs,
    }


def _dvs_cfg(**kwargs) -> dict:
    cfg = dict(input_size=(2, 128, 128), pool_size=None, crop_pct=1.0, mean=(0.0, 0.0), std=(1.0, 1.0),
               first_conv='stages.0.proj.0.0', fixed_input_size=True)
    return _cfg(**dict(cfg, **kwargs))


default_cfgs = generate_default_cfgs({
    'sew_resnet18': _cfg(),
    'sew_resnet34': _cfg(),
    'sew_resnet50': _cfg(),
    'sew_resnet101': _cfg(),
    'sew_resnet152': _cfg(),
    'sew_resnet_gesture': _dvs_cfg(num_classes=11, pool_size=(1, 1)),
    'sew_resnet_cifar10dvs': _dvs_cfg(num_classes=10, pool_size=(1, 1)),
    'sew_resnet_fmnist': _dvs_cfg(num_classes=10, input_size=(1, 28, 28), pool_size=(7, 7), mean=(0.286,),
                                  std=(0.353,),
                                  file='sew_resnet_fmnist.fashion_mnist-3c1fdc80838ad91c.safetensors'),
    'sew_resnet_nmnist': _dvs_cfg(num_classes=10, input_size=(2, 34, 34), pool_size=(8, 8),
                                  file='sew_resnet_nmnist.nmnist-0a8c0e48479d521d.safetensors'),
})


@register_model
def sew_resnet18(pretrained: bool = False, **kwargs) -> SEWResNet:
    """SEW-ResNet-18 (basic blocks [2, 2, 2, 2]), ImageNet, T=4, ADD."""
    model_args = dict(block='basic', layers=(2, 2, 2, 2))
    return _create_sew_resnet('sew_resnet18', pretrained, **dict(model_args, **kwargs))


@register_model
def sew_resnet34(pretrained: bool = False, **kwargs) -> SEWResNet:
    """SEW-ResNet-34 (basic blocks [3, 4, 6, 3]), ImageNet, T=4, ADD."""
    model_args = dict(block='basic', layers=(3, 4, 6, 3))
    return _create_sew_resnet('sew_resnet34', pretrained, **dict(model_args, **kwargs))


@register_model
def sew_resnet50(pretrained: bool = False, **kwargs) -> SEWResNet:
    """SEW-ResNet-50 (bottlenecks [3, 4, 6, 3]), ImageNet, T=4, ADD."""
    model_args = dict(block='bottleneck', layers=(3, 4, 6, 3))
    return _create_sew_resnet('sew_resnet50', pretrained, **dict(model_args, **kwargs))


@register_model
def sew_resnet101(pretrained: bool = False, **kwargs) -> SEWResNet:
    """SEW-ResNet-101 (bottlenecks [3, 4, 23, 3]), ImageNet, T=4, ADD."""
    model_args = dict(block='bottleneck', layers=(3, 4, 23, 3))
    return _create_sew_resnet('sew_resnet101', pretrained, **dict(model_args, **kwargs))


@register_model
def sew_resnet152(pretrained: bool = False, **kwargs) -> SEWResNet:
    """SEW-ResNet-152 (bottlenecks [3, 8, 36, 3]), ImageNet, T=4, ADD."""
    model_args = dict(block='bottleneck', layers=(3, 8, 36, 3))
    return _create_sew_resnet('sew_resnet152', pretrained, **dict(model_args, **kwargs))


@register_model
def sew_resnet_gesture(pretrained: bool = False, **kwargs) -> SEWResNetDVS:
    """The SEW-ResNet of the paper's DVS128 Gesture experiments: 7 stages of 32 channels, T=16, 11 classes."""
    model_args = dict(channels=(32,) * 7)
    return _create_sew_resnet_dvs('sew_resnet_gesture', pretrained, **dict(model_args, **kwargs))


@register_model
def sew_resnet_cifar10dvs(pretrained: bool = False, **kwargs) -> SEWResNetDVS:
    """The SEW-ResNet of the paper's CIFAR10-DVS experiments: 4 stages of 64 and 3 of 128 channels, T=16, 10 classes."""
    model_args = dict(channels=(64,) * 4 + (128,) * 3)
    return _create_sew_resnet_dvs('sew_resnet_cifar10dvs', pretrained, **dict(model_args, **kwargs))


@register_model
def sew_resnet_fmnist(pretrained: bool = False, **kwargs) -> SEWResNetDVS:
    """The Fashion-MNIST recipe's SEW-ResNet (``experiment=fashion_mnist``): stages of 16 and 32 channels, T=2, ADD."""
    model_args = dict(channels=(16, 32), num_classes=10, T=2, in_chans=1, img_size=28, connect_f='ADD')
    return _create_sew_resnet_dvs('sew_resnet_fmnist', pretrained, **dict(model_args, **kwargs))


@register_model
def sew_resnet_nmnist(pretrained: bool = False, **kwargs) -> SEWResNetDVS:
    """The N-MNIST recipe's SEW-ResNet (``experiment=nmnist``): 8 event frames [T, 2, 34, 34], stages of 16 and 32."""
    model_args = dict(channels=(16, 32), num_classes=10, T=8, in_chans=2, img_size=34, connect_f='ADD')
    return _create_sew_resnet_dvs('sew_resnet_nmnist', pretrained, **dict(model_args, **kwargs))
