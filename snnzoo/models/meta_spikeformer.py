"""Meta-SpikeFormer (Yao et al., "Spike-driven Transformer V2: Meta Spiking Neural Network Architecture Inspiring the
Design of Next-generation Neuromorphic Chips", ICLR 2024, arXiv:2404.03663), ImageNet classification.

A faithful re-implementation of BICLab/Spike-Driven-Transformer-V2 (``classification/models.py``,
``Spiking_vit_MetaFormer``); its checkpoints (``{'model': ..., 'optimizer': ..., 'args': ...}``) load with
:func:`snnzoo.load_checkpoint`.

Four stages of widths ``embed_dim = (C0, C1, C2, C3)``; the stream ``[T, B, C, H, W]`` is real-valued, every branch
starts with a LIF (see :mod:`snnzoo.layers.metaformer_blocks`). At 224x224:

    stem     conv7x7/2 -> BN (C0/2, 112), 1 SpikingConvBlock(C0/2)
    stage 1  LIF-conv3x3/2-BN (C0, 56),  depth[0] SpikingConvBlocks
    stage 2  LIF-conv3x3/2-BN (C1, 28),  depth[1] SpikingConvBlocks
    stage 3  LIF-conv3x3/2-BN (C2, 14),  depth[2] MetaFormerBlocks (spike-driven linear attention + MLP)
    stage 4  LIF-conv3x3/1-BN (C3, 14),  depth[3] MetaFormerBlocks
    head     mean over tokens -> LIF -> Linear per step, mean over T  (kd: a second Linear on the same spikes)

The convolutional part (stem to stage 2) computes on channels-last frames on the CPU
(:func:`~snnzoo.layers.temporal.channels_last_frames`: faster depthwise convolutions, BatchNorm statistics and
padding there); stages 3-4 get a contiguous stream.
"""
from functools import partial
from typing import Optional, Sequence

import torch
import torch.nn as nn
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.models import generate_default_cfgs

from ..layers.metaformer_blocks import ConvBNDownsample, MetaFormerBlock, SpikingConvBlock
from ..layers.neuron import LIFNode
from ..layers.temporal import channels_last_frames, to_time_major
from ._builder import build_snn_model
from ._heads import (LinearHeadMixin, check_global_pool, create_classifier, init_trunc_normal_,
                     spiking_head_input, unpooled)
from ._registry import register_model

torch.fx.wrap('channels_last_frames')  # a leaf of FX graphs: input checks and layout choices are not traced
torch.fx.wrap('to_time_major')

__all__ = ['MetaSpikeFormer', 'checkpoint_filter_fn']


def _per_stage(value, name: str) -> tuple:
    if isinstance(value, (int, float)):
        raise ValueError(f"Meta-SpikeFormer takes {name} as a list of 4 values, one per stage, got {value!r}")
    value = tuple(int(v) for v in value)
    if len(value) != 4:
        raise ValueError(f"Meta-SpikeFormer takes {name} as a list of 4 values, one per stage, got {list(value)}")
    return value


class MetaSpikeFormer(LinearHeadMixin, nn.Module):
    """Meta-SpikeFormer (SDT v2).

    Args:
        img_size: default input size (sets the data config; the network is fully convolutional).
        in_chans: input channels.
        num_classes: classes (0: ``forward`` returns the pooled features).
        embed_dim: widths of the 4 stages, e.g. (96, 192, 384, 480) for meta_spikeformer_8_384.
        depth: blocks per stage (conv blocks in stages 1-2, Transformer blocks in stages 3-4), default (1, 2, 6, 2);
            the stem's conv block at width C0/2 is always one.
        num_heads: attention heads in stages 3 and 4 (the attention scale is the constant 0.125 of the original).
        mlp_ratio: hidden width / width of the conv blocks' 3x3 convs and of the MLPs.
        T: time steps (the image is repeated T times; event input ``[B, T, C, H, W]`` brings its own T).
            The original trains at T=1, then fine-tunes at T=4 with ``kd``.
        kd: add the distillation head ``head_kd``. In train mode ``forward`` then returns the list
            ``[head logits, head_kd logits]``, in eval mode their average (as the original).
        drop_rate: dropout before the classifier(s) (timm's head dropout; the original has none).
        drop_path_rate: stochastic depth, rising linearly to this rate over all blocks (per sample, shared over T).
            The original builds DropPath modules but never applies them: keep 0 to reproduce it.
        global_pool: ``'avg'`` or ``''`` (``num_classes=0`` only: ``forward`` returns the unpooled features).
        backend: neuron backend, ``'auto'``, ``'torch'`` or ``'cupy'``.

    timm's feature API: five levels, the outputs of the stem's conv block (stride 2), of stages 1 and 2 (4, 8) and of
    stages 3 and 4 (16, 16), each averaged over T (``return_per_step=True``: per step). ``forward_features(x)`` is stage
    4 averaged over T. The head fires a LIF per step: ``forward_head`` on the per-step stream is exactly ``forward``; on
    time-averaged features it drives the head neuron with them as a constant input for ``T`` steps.

    Differences from the original: T is a constructor argument (the original sets ``model.T`` after construction),
    block counts and widths are arguments (hard-wired to 1+1, 2, 6, 2 and mlp_ratio 4 there), ``drop_path_rate`` acts;
    parameter names follow the original except the conv blocks (``ConvBlock1_1`` -> ``conv_block1_1``,
    ``ConvBlock2_1.0``/``ConvBlock2_2.0`` -> ``conv_block2.0``/``.1``, ``.Conv.`` -> ``.sep_conv.``) and the MLPs'
    ``fc1_conv``/``fc2_conv`` -> ``fc1``/``fc2``, which :func:`checkpoint_filter_fn` maps.
    """

    def __init__(self, img_size=224, in_chans: int = 3, num_classes: int = 1000,
                 embed_dim: Sequence[int] = (128, 256, 512, 640), depth: Sequence[int] = (1, 2, 6, 2),
                 num_heads: int = 8, mlp_ratio: float = 4.0, T: int = 4, kd: bool = False, drop_rate: float = 0.0,
                 drop_path_rate: float = 0.0, global_pool: str = 'avg', backend: str = 'auto'):
        super().__init__()
        embed_dim = _per_stage(embed_dim, 'embed_dim')
        depth = _per_stage(depth, 'depth')
        if embed_dim[0] % 2:
            raise ValueError(f"embed_dim[0] must be even (the stem has embed_dim[0] / 2 channels), got {embed_dim[0]}")
        for d in embed_dim[2:]:
            if d % num_heads:
                raise ValueError(f"embed_dim of stages 3 and 4 ({embed_dim[2:]}) must be divisible by num_heads "
                                 f"({num_heads})")
        if T < 1:
            raise ValueError(f"T must be >= 1, got {T}")
        neuron_layer = partial(LIFNode, tau=2.0, detach_reset=True, backend=backend)
        c0, c1, c2, c3 = embed_dim
        self.img_size = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
        self.in_chans = in_chans
        self.num_classes = num_classes
        self.T = T
        self.kd = kd
        self.num_features = self.head_hidden_size = c3
        self.global_pool = check_global_pool(global_pool, num_classes, type(self).__name__)

        rates = iter(torch.linspace(0, drop_path_rate, 1 + sum(depth), device='cpu').tolist())

        def conv_blocks(dim: int, n: int) -> nn.Sequential:
            return nn.Sequential(*[SpikingConvBlock(dim, mlp_ratio, neuron_layer, next(rates)) for _ in range(n)])

        def transformer_blocks(dim: int, n: int) -> nn.Sequential:
            return nn.Sequential(*[MetaFormerBlock(dim, num_heads, mlp_ratio, neuron_layer, next(rates))
                                   for _ in range(n)])

        self.downsample1_1 = ConvBNDownsample(in_chans, c0 // 2, 7, stride=2, padding=3, first_layer=True)
        self.conv_block1_1 = conv_blocks(c0 // 2, 1)
        self.downsample1_2 = ConvBNDownsample(c0 // 2, c0, neuron_layer=neuron_layer)
        self.conv_block1_2 = conv_blocks(c0, depth[0])
        self.downsample2 = ConvBNDownsample(c0, c1, neuron_layer=neuron_layer)
        self.conv_block2 = conv_blocks(c1, depth[1])
        self.downsample3 = ConvBNDownsample(c1, c2, neuron_layer=neuron_layer)
        self.block3 = transformer_blocks(c2, depth[2])
        self.downsample4 = ConvBNDownsample(c2, c3, stride=1, neuron_layer=neuron_layer)
        self.block4 = transformer_blocks(c3, depth[3])
        self.head_lif = neuron_layer()
        self.head_drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(c3, num_classes) if num_classes > 0 else nn.Identity()
        self.head_kd = (nn.Linear(c3, num_classes) if num_classes > 0 else nn.Identity()) if kd else None
        self.feature_info = [dict(num_chs=c, reduction=r, module=m) for c, r, m in zip(
            (c0 // 2, c0, c1, c2, c3), (2, 4, 8, 16, 16), _LEVELS)]
        self.apply(init_trunc_normal_)

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None) -> None:
        super().reset_classifier(num_classes, global_pool)
        if self.kd:
            self.head_kd = create_classifier(self, self.num_features, num_classes)

    def forward_levels(self, x: torch.Tensor):
        """``[B, C, H, W]`` or ``[B, T, C, H, W]`` -> yields the real-valued per-step output of the stem's conv block
        and of stages 1-4 (``[T, B, C_i, H / r_i, W / r_i]``, r = 2, 4, 8, 16, 16)."""
        x = channels_last_frames(to_time_major(x, self.T, self.in_chans, name=type(self).__name__))
        for i, (down, blocks) in enumerate(_STAGES[:len(self.feature_info)]):
            x = getattr(self, blocks)(getattr(self, down)(x))
            if i == 2:
                x = x.contiguous()  # stages 3-4 compute on a contiguous stream
            yield x

    def _prune_levels(self, last: int) -> None:
        for down, blocks in _STAGES[last + 1:]:
            setattr(self, down, nn.Identity())
            setattr(self, blocks, nn.Identity())

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False, return_per_step: bool = False):
        """``[T, B, C3, H, W]`` -> logits ``[B, num_classes]`` (mean over T) or ``[T, B, num_classes]``.

        With ``kd``: a list ``[head, head_kd]`` in train mode, ``(head + head_kd) / 2`` in eval mode.
        ``pre_logits=True`` returns the head neuron's spikes averaged over T, ``[B, C3]`` (``[T, B, C3]`` per step).
        Time-averaged features ``[B, C3, H, W]`` drive the head neuron as a constant input for ``T`` steps;
        ``global_pool=''``: the unpooled features.
        """
        if not self.global_pool:
            return unpooled(x, return_per_step)
        x = self.head_drop(self.head_lif(spiking_head_input(x, self.T)))
        reduce = (lambda y: y) if return_per_step else (lambda y: y.mean(0))
        if pre_logits:
            return reduce(x)
        out = reduce(self.head(x))
        if self.head_kd is None:
            return out
        out_kd = reduce(self.head_kd(x))
        return [out, out_kd] if self.training else (out + out_kd) / 2


# the feature levels: (downsampling, blocks) module names
_STAGES = (('downsample1_1', 'conv_block1_1'), ('downsample1_2', 'conv_block1_2'), ('downsample2', 'conv_block2'),
           ('downsample3', 'block3'), ('downsample4', 'block4'))
_LEVELS = tuple(blocks for _, blocks in _STAGES)

_RENAMES = (('ConvBlock1_1.', 'conv_block1_1.'), ('ConvBlock1_2.', 'conv_block1_2.'),
            ('ConvBlock2_1.0.', 'conv_block2.0.'), ('ConvBlock2_2.0.', 'conv_block2.1.'))


def checkpoint_filter_fn(state_dict: dict, model: nn.Module) -> dict:
    """Map an original Spike-Driven-Transformer-V2 state_dict to snnzoo's names (snnzoo's own pass unchanged).

    ``ConvBlock1_1.`` -> ``conv_block1_1.``, ``ConvBlock1_2.`` -> ``conv_block1_2.``, ``ConvBlock2_1.0.`` ->
    ``conv_block2.0.``, ``ConvBlock2_2.0.`` -> ``conv_block2.1.``, ``.Conv.`` -> ``.sep_conv.``, ``.mlp.fc1_conv.`` ->
    ``.mlp.fc1.``, ``.mlp.fc2_conv.`` -> ``.mlp.fc2.``.
    """
    out = {}
    for k, v in state_dict.items():
        for old, new in _RENAMES:
            if k.startswith(old):
                k = (new + k[len(old):]).replace('.Conv.', '.sep_conv.')
                break
        out[k.replace('.mlp.fc1_conv.', '.mlp.fc1.').replace('.mlp.fc2_conv.', '.mlp.fc2.')] = v
    return out


def _create_meta_spikeformer(variant: str, pretrained: bool = False, **kwargs) -> MetaSpikeFormer:
    return build_snn_model(MetaSpikeFormer, variant, pretrained, pretrained_filter_fn=checkpoint_filter_fn,
                           feature_cfg=dict(feature_cls='getter', out_indices=(0, 1, 2, 3, 4)), **kwargs)


def _cfg(**kwargs) -> dict:
    return {
        'url': '', 'num_classes': 1000, 'input_size': (3, 224, 224), 'pool_size': (14, 14), 'crop_pct': 0.9,
        'interpolation': 'bicubic', 'mean': IMAGENET_DEFAULT_MEAN, 'std': IMAGENET_DEFAULT_STD,
        'first_conv': 'downsample1_1.encode_conv', 'classifier': 'head', 'paper_ids': 'arXiv:2404.03663',
        'origin_url': 'https://github.com/BICLab/Spike-Driven-Transformer-V2', **kwargs,
    }


default_cfgs = generate_default_cfgs({
    'meta_spikeformer_8_384': _cfg(),
    'meta_spikeformer_8_512': _cfg(),
    'meta_spikeformer_8_768': _cfg(),
})


@register_model
def meta_spikeformer_8_384(pretrained: bool = False, **kwargs) -> MetaSpikeFormer:
    """The original's ``metaspikformer_8_384``: widths (96, 192, 384, 480), 31.3M parameters (the paper's "31M")."""
    model_args = dict(embed_dim=(96, 192, 384, 480), depth=(1, 2, 6, 2), num_heads=8, T=4)
    return _create_meta_spikeformer('meta_spikeformer_8_384', pretrained, **dict(model_args, **kwargs))


@register_model
def meta_spikeformer_8_512(pretrained: bool = False, **kwargs) -> MetaSpikeFormer:
    """The original's ``metaspikformer_8_512``: widths (128, 256, 512, 640), 55.4M parameters (the paper's "55M")."""
    model_args = dict(embed_dim=(128, 256, 512, 640), depth=(1, 2, 6, 2), num_heads=8, T=4)
    return _create_meta_spikeformer('meta_spikeformer_8_512', pretrained, **dict(model_args, **kwargs))


@register_model
def meta_spikeformer_8_768(pretrained: bool = False, **kwargs) -> MetaSpikeFormer:
    """The original's ``metaspikformer_8_768``: widths (192, 384, 768, 960), 123.7M parameters."""
    model_args = dict(embed_dim=(192, 384, 768, 960), depth=(1, 2, 6, 2), num_heads=8, T=4)
    return _create_meta_spikeformer('meta_spikeformer_8_768', pretrained, **dict(model_args, **kwargs))
