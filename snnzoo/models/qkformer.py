"""QKFormer: hierarchical spiking Transformer with Q-K attention (Zhou et al., NeurIPS 2024, arXiv:2403.16552).

Original code: github.com/zhouchenlin2096/QKFormer (commit c2a00e8), one model file per data set; the three layouts
are a constructor option here (``layout``):

| layout     | stem (E = stage-1 dim)                      | stages (dims)         | blocks for ``depth`` d   |
|------------|---------------------------------------------|-----------------------|--------------------------|
| `imagenet` | 3 conv stages, /4 (pools in stages 1, 2)    | D/4, D/2, D           | 1 QK + 2 QK + (d-3) SSA  |
| `cifar`    | 2 conv stages, no downsampling              | D/4, D/2, D           | 1 QK + 1 QK + (d-2) SSA  |
| `dvs`      | 4 conv stages, /8 (pools in stages 2-4)     | D/2, D                | 1 QK + (d-1) SSA         |

Each later stage starts with a downsampling embedding (two conv stages + a 1x1 stride-2 shortcut, /2; the ImageNet
layout pools in its first conv stage, the others in the second; see :mod:`snnzoo.layers.hierarchical_patch_embed`).
Blocks: ``x = x + attn(x); x = x + mlp(x)``, where attn is Q-K attention (QKTA, or QKCA with ``attn_type='channel'``)
in every stage but the last, and Spikformer's spiking self-attention (SSA, scale 0.125) in the last. Everything stays
``[T, B, C, H, W]``; the head averages the last stage over tokens and T (``[T, B, C] -> [B, C]``), then a Linear layer.

``reference_quirks=True`` reproduces the original's issue 14 (see :class:`QKFormer`); the released checkpoints were
trained with it.
"""
import re
from functools import partial
from typing import Callable, Optional, Sequence, Union

import torch
import torch.nn as nn
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.models import generate_default_cfgs

from ..layers.attention import SpikingSelfAttention
from ..layers.drop import DropPath
from ..layers.hierarchical_patch_embed import SpikingConvStem, SpikingDownsample
from ..layers.mlp import SpikingMlp
from ..layers.neuron import LIFNode
from ..layers.qk_attention import ChannelQKAttention, TokenQKAttention
from ..layers.temporal import to_time_major
from ._builder import build_snn_model
from ._heads import LinearHeadMixin, check_global_pool, init_trunc_normal_, pooled_head, unpooled
from ._registry import register_model

torch.fx.wrap('to_time_major')  # a leaf of FX graphs: input checks and layout choices are not traced

__all__ = ['QKFormer', 'QKFormerBlock', 'checkpoint_filter_fn']

IntOrList = Union[int, Sequence[int]]

# per layout: stem channel divisors of the stage-1 dim, the stem's pools and shortcut source, the QK blocks of the
# stages before the last (an int ``depth`` gives the rest to the last stage), and where the downsampling pools.
_LAYOUTS = {
    'imagenet': dict(stem_div=(2, 1, 1), stem_pool=(True, True, False), shortcut_from=0, qk_depths=(1, 2),
                     pool_first=True),
    'cifar': dict(stem_div=(2, 1), stem_pool=(False, False), shortcut_from=0, qk_depths=(1, 1), pool_first=False),
    'dvs': dict(stem_div=(8, 4, 2, 1), stem_pool=(False, True, True, True), shortcut_from=1, qk_depths=(1,),
                pool_first=False),
}


class BatchAsTimeLIF(LIFNode):
    """The original's output LIF of SSA (its ``proj_lif``, QKFormer issue 14): a LIF run over ``x.flatten(0, 1)``,
    i.e. over T*B "time steps" ordered (t0, b0), (t0, b1), ..., (t1, b0), ..., with one membrane per (channel, token)
    shared by the whole batch. Input and output ``[T, B, ...]``. Only for the released checkpoints: samples leak into
    each other."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.flatten(0, 1)).view_as(x)


class QKFormerBlock(nn.Module):
    """``x = x + attn(x); x = x + mlp(x)`` on the residual stream ``[T, B, C, H, W]`` (both branches end in spikes;
    ``drop_path`` drops a branch per sample in training). The MLP is two 1x1 conv-BN-LIF layers (C -> C*mlp_ratio -> C).
    """

    def __init__(self, attn: nn.Module, dim: int, mlp_ratio: float = 4.0, drop_path: float = 0.0,
                 neuron_layer: Optional[Callable[..., nn.Module]] = None):
        super().__init__()
        self.attn = attn
        self.mlp = SpikingMlp(dim, int(dim * mlp_ratio), proj_type='conv2d', neuron_layer=neuron_layer)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self.attn(x))
        return x + self.drop_path(self.mlp(x))


def _per_stage(value, n: int, name: str) -> list:
    if isinstance(value, (int, float)):
        return [value] * n
    value = list(value)
    if len(value) != n:
        raise ValueError(f"{name} needs one value per stage ({n} stages), got {value}")
    return value


class QKFormer(LinearHeadMixin, nn.Module):
    """QKFormer (hierarchical spiking Transformer): spiking conv stem -> QK-attention stages -> an SSA stage -> head.

    Args:
        img_size: nominal input size (the default cfg's); the network is convolutional and takes any H, W.
        in_chans: input channels (3 for images, 2 for DVS polarity frames).
        num_classes: classes of the Linear head (0: no head, ``forward`` returns the pooled features).
        T: time steps a static image ``[B, C, H, W]`` is repeated for; event input ``[B, T', C, H, W]`` keeps its T'.
        embed_dim: channels of the last stage D (earlier stages D/2, D/4) or a list, one per stage.
        depth: total number of blocks (split as in the table of the module docstring) or a list, one per stage.
        num_heads: attention heads, for every stage or a list, one per stage.
        mlp_ratio: hidden channels of the MLPs / channels.
        layout: ``'imagenet'``, ``'cifar'`` or ``'dvs'``: stem, number of stages and downsampling (module docstring).
        attn_type: ``'token'`` (QKTA, as released) or ``'channel'`` (QKCA) in the Q-K attention stages.
        reference_quirks: reproduce the original bit for bit (needed for its checkpoints): the proj LIF of every SSA
            block runs over the ``[T*B, C, N]`` tensor, i.e. over T*B time steps (QKFormer issue 14), so each sample's
            output depends on the other samples of the batch and on their order. The default (False) runs it over the
            T steps of each sample, like every other neuron. Nothing else differs.
        drop_rate: dropout before the head (the original has none).
        drop_path_rate: stochastic depth, rising linearly over the blocks to this rate (the original builds the schedule
            but never applies it: leave 0 to train as it did).
        global_pool: ``'avg'`` or ``''`` (``num_classes=0`` only: ``forward`` returns the unpooled features).
        backend: neuron backend, ``'auto'``, ``'torch'`` or ``'cupy'``.

    timm's feature API: the levels are the stem's output and every stage's output (ImageNet layout: strides 4, 4, 8,
    16; CIFAR: 1, 1, 2, 4; DVS: 8, 8, 16), each averaged over T (``return_per_step=True``: per step);
    ``forward_features(x)`` is the last stage's stream averaged over T.

    ``forward(x)`` takes ``[B, C, H, W]`` or ``[B, T, C, H, W]`` and returns ``[B, num_classes]`` (logits of the
    features averaged over T), or ``[T, B, num_classes]`` with ``return_per_step=True``.
    """

    def __init__(self, img_size: int = 224, in_chans: int = 3, num_classes: int = 1000, T: int = 4,
                 embed_dim: IntOrList = 384, depth: IntOrList = 10, num_heads: IntOrList = 6, mlp_ratio: float = 4.0,
                 layout: str = 'imagenet', attn_type: str = 'token', reference_quirks: bool = False,
                 drop_rate: float = 0.0, drop_path_rate: float = 0.0, global_pool: str = 'avg',
                 backend: str = 'auto'):
        super().__init__()
        if layout not in _LAYOUTS:
            raise ValueError(f"unknown QKFormer layout {layout!r}; valid layouts are {sorted(_LAYOUTS)}")
        if attn_type not in ('token', 'channel'):
            raise ValueError(f"attn_type must be 'token' (QKTA) or 'channel' (QKCA), got {attn_type!r}")
        if T < 1:
            raise ValueError(f"T must be a positive number of time steps, got {T}")
        cfg = _LAYOUTS[layout]
        n = len(cfg['qk_depths']) + 1
        if isinstance(embed_dim, int):
            dims = [embed_dim // 2 ** (n - 1 - i) for i in range(n)]
        else:
            dims = [int(d) for d in _per_stage(embed_dim, n, 'embed_dim')]
        if isinstance(depth, int):
            depths = [*cfg['qk_depths'], depth - sum(cfg['qk_depths'])]
            if depths[-1] < 0:
                raise ValueError(f"layout {layout!r} has {sum(cfg['qk_depths'])} Q-K attention blocks before its SSA "
                                 f"stage, so depth must be at least that, got {depth}; or pass one depth per stage")
        else:
            depths = [int(d) for d in _per_stage(depth, n, 'depth')]
        heads = [int(h) for h in _per_stage(num_heads, n, 'num_heads')]
        for i, (dim, h) in enumerate(zip(dims, heads)):
            if h < 1 or dim % h:
                raise ValueError(f"stage {i + 1} has {dim} channels, not divisible by num_heads={h}; "
                                 f"choose embed_dim / num_heads so that every stage's dim divides")

        self.img_size = img_size
        self.in_chans = in_chans
        self.num_classes = num_classes
        self.T = T
        self.layout = layout
        self.attn_type = attn_type
        self.reference_quirks = reference_quirks
        self.embed_dims, self.depths, self.num_heads = dims, depths, heads
        self.num_features = self.head_hidden_size = dims[-1]
        self.global_pool = check_global_pool(global_pool, num_classes, type(self).__name__)
        self.num_stages = n

        neuron = partial(LIFNode, tau=2.0, detach_reset=True, backend=backend)
        rates = [drop_path_rate * j / max(sum(depths) - 1, 1) for j in range(sum(depths))]  # linear, 0 to the rate
        for i in range(n):
            if i == 0:
                embed = SpikingConvStem(in_chans, [dims[0] // d for d in cfg['stem_div']], cfg['stem_pool'],
                                        cfg['shortcut_from'], neuron_layer=neuron)
            else:
                embed = SpikingDownsample(dims[i - 1], dims[i], pool_first=cfg['pool_first'], neuron_layer=neuron)
            first = sum(depths[:i])
            blocks = [QKFormerBlock(self._attention(dims[i], heads[i], last=i == n - 1, neuron_layer=neuron),
                                    dims[i], mlp_ratio, rates[first + j], neuron) for j in range(depths[i])]
            self.add_module(f'patch_embed{i + 1}', embed)
            self.add_module(f'stage{i + 1}', nn.ModuleList(blocks))
        self.head_drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(dims[-1], num_classes) if num_classes > 0 else nn.Identity()
        stride = 2 ** sum(cfg['stem_pool'])
        self.feature_info = [dict(num_chs=dims[0], reduction=stride, module='patch_embed1')] + [
            dict(num_chs=dims[i], reduction=stride * 2 ** i,
                 module=f'stage{i + 1}.{depths[i] - 1}' if depths[i] else f'patch_embed{i + 1}') for i in range(n)]
        self.apply(init_trunc_normal_)

    def _attention(self, dim: int, num_heads: int, last: bool, neuron_layer: Callable[..., nn.Module]) -> nn.Module:
        if not last:
            if self.attn_type == 'channel':
                return ChannelQKAttention(dim, neuron_layer=neuron_layer)
            return TokenQKAttention(dim, num_heads, neuron_layer=neuron_layer)
        attn = SpikingSelfAttention(dim, num_heads, scale=0.125, proj_type='conv1d', neuron_layer=neuron_layer)
        if self.reference_quirks:
            attn.out_lif = BatchAsTimeLIF(**neuron_layer.keywords)
        return attn

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None) -> None:
        super().reset_classifier(num_classes, global_pool)
        init_trunc_normal_(self.head)

    def forward_levels(self, x: torch.Tensor):
        """``[B, C, H, W]`` or ``[B, T, C, H, W]`` -> yields the per-step output of the stem, then of every stage's
        residual stream, ``[T, B, C_i, H', W']``."""
        x = to_time_major(x, self.T, self.in_chans, name=type(self).__name__)
        x = self.patch_embed1(x)
        yield x
        for i in range(1, len(self.feature_info)):
            if i > 1:
                x = getattr(self, f'patch_embed{i}')(x)
            blocks = getattr(self, f'stage{i}')
            for block in blocks:
                x = block(x)
            yield x

    def _prune_levels(self, last: int) -> None:
        for i in range(last + 1, len(self.feature_info)):
            self.add_module(f'stage{i}', nn.ModuleList())
            if i > 1:
                self.add_module(f'patch_embed{i}', nn.Identity())

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False, return_per_step: bool = False) -> torch.Tensor:
        """``[T, B, D, H', W']`` (or its mean over T ``[B, D, H', W']``) -> mean over tokens (and over T unless
        ``return_per_step``) -> head: ``[B, num_classes]`` or ``[T, B, num_classes]`` (``pre_logits``: the pooled
        ``[B, D]`` / ``[T, B, D]``); ``global_pool=''``: the unpooled features."""
        if not self.global_pool:
            return unpooled(x, return_per_step)
        return pooled_head(x.flatten(-2).mean(-1), self.head_drop, self.head, pre_logits, return_per_step)


_PATCH_EMBED_KEY = re.compile(r'^patch_embed(\d+)\.proj(\d*|_res)_(conv|bn)\.')
_ATTN_KEY = re.compile(r'^(stage\d+\.\d+)\.(?:tssa|ssa|attn)\.(q|k|v|proj)_(conv|bn)\.')
_MLP_KEY = re.compile(r'^(stage\d+\.\d+)\.mlp\.(?:mlp|fc)([12])_(conv|bn)\.')


def _snnzoo_key(key: str) -> str:
    """An original key -> ours.

    Blocks: the attention (``tssa`` / ``ssa`` / ``attn``) is ``attn`` with ``{q,k,v}_conv`` -> ``{q,k,v}_proj`` and
    ``proj_{conv,bn}`` -> ``out_{proj,bn}``; the MLP's ``mlp{i}_*`` / ``fc{i}_*`` are ``fc{i}`` (conv) and ``fc{i}_bn``.
    Patch embeddings: ``proj_res_*`` -> ``shortcut.*``; the stem's ``proj_*``, ``proj1_*``, ... -> ``stages.0``,
    ``stages.1``, ...; a downsampling embedding's ``proj3_*`` (DVS files: ``proj_*``) and ``proj4_*`` -> ``stages.0``
    and ``stages.1``.
    """
    match = _ATTN_KEY.match(key)
    if match:
        block, branch, op = match.groups()
        branch = 'out' if branch == 'proj' else branch
        return f'{block}.attn.{branch}_{"proj" if op == "conv" else "bn"}.' + key[match.end():]
    match = _MLP_KEY.match(key)
    if match:
        block, i, op = match.groups()
        return f'{block}.mlp.fc{i}{"" if op == "conv" else "_bn"}.' + key[match.end():]
    match = _PATCH_EMBED_KEY.match(key)
    if match:
        embed, unit, op = match.groups()
        if unit == '_res':
            target = 'shortcut'
        elif embed == '1':
            target = f'stages.{int(unit or 0)}'
        else:
            target = f'stages.{1 if unit == "4" else 0}'
        return f'patch_embed{embed}.{target}.{op}.' + key[match.end():]
    return key


def checkpoint_filter_fn(state_dict: dict, model: QKFormer) -> dict:
    """Map an original QKFormer checkpoint (any of its files) to snnzoo's names; snnzoo's own keys pass unchanged."""
    own = model.state_dict()
    return {k if k in own else _snnzoo_key(k): v for k, v in state_dict.items()}


def _create_qkformer(variant: str, pretrained: bool = False, **kwargs) -> QKFormer:
    return build_snn_model(QKFormer, variant, pretrained, pretrained_filter_fn=checkpoint_filter_fn,
                           feature_cfg=dict(feature_cls='getter', out_indices=None), **kwargs)


def _cfg(**kwargs) -> dict:
    return {
        'num_classes': 1000, 'input_size': (3, 224, 224), 'pool_size': (14, 14), 'crop_pct': 0.875,
        'interpolation': 'bicubic', 'mean': IMAGENET_DEFAULT_MEAN, 'std': IMAGENET_DEFAULT_STD,
        'first_conv': 'patch_embed1.stages.0.conv', 'classifier': 'head', 'paper_ids': 'arXiv:2403.16552',
        **kwargs,
    }


_CIFAR10_MEAN, _CIFAR10_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)

default_cfgs = generate_default_cfgs({
    'qkformer_10_384': _cfg(),
    'qkformer_10_512': _cfg(),
    'qkformer_10_768': _cfg(),
    'qkformer_4_384_cifar': _cfg(num_classes=10, input_size=(3, 32, 32), pool_size=(8, 8), crop_pct=1.0,
                                 mean=_CIFAR10_MEAN,
                                 std=_CIFAR10_STD),
    'qkformer_2_256_dvs': _cfg(num_classes=10, input_size=(2, 128, 128), pool_size=(8, 8), crop_pct=1.0,
                               mean=(0.0, 0.0),
                               std=(1.0, 1.0)),
})


@register_model
def qkformer_10_384(pretrained: bool = False, **kwargs) -> QKFormer:
    """QKFormer HST-10-384 on ImageNet (16.47M): dims 96/192/384, 1 + 2 QK blocks + 7 SSA blocks, 6 heads, T=4."""
    model_args = dict(embed_dim=384, depth=10, num_heads=6, mlp_ratio=4.0, T=4, layout='imagenet')
    return _create_qkformer('qkformer_10_384', pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def qkformer_10_512(pretrained: bool = False, **kwargs) -> QKFormer:
    """QKFormer HST-10-512 on ImageNet (29.08M): dims 128/256/512, 1 + 2 QK blocks + 7 SSA blocks, 8 heads, T=4."""
    model_args = dict(embed_dim=512, depth=10, num_heads=8, mlp_ratio=4.0, T=4, layout='imagenet')
    return _create_qkformer('qkformer_10_512', pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def qkformer_10_768(pretrained: bool = False, **kwargs) -> QKFormer:
    """QKFormer HST-10-768 on ImageNet (64.96M): dims 192/384/768, 1 + 2 QK blocks + 7 SSA blocks, 12 heads, T=4."""
    model_args = dict(embed_dim=768, depth=10, num_heads=12, mlp_ratio=4.0, T=4, layout='imagenet')
    return _create_qkformer('qkformer_10_768', pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def qkformer_4_384_cifar(pretrained: bool = False, **kwargs) -> QKFormer:
    """QKFormer-4-384 on CIFAR (6.74M with 100 classes): dims 96/192/384, 1 + 1 QK blocks + 2 SSA blocks, 8 heads."""
    model_args = dict(img_size=32, num_classes=10, embed_dim=384, depth=4, num_heads=8, mlp_ratio=4.0, T=4,
                      layout='cifar')
    return _create_qkformer('qkformer_4_384_cifar', pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def qkformer_2_256_dvs(pretrained: bool = False, **kwargs) -> QKFormer:
    """QKFormer-2-256 on CIFAR10-DVS (1.50M): dims 128/256, 1 QK block + 1 SSA block, 16 heads, mlp_ratio 1, 16 frames
    (DVS128 Gesture: ``num_classes=11, mlp_ratio=4``)."""
    model_args = dict(img_size=128, in_chans=2, num_classes=10, embed_dim=256, depth=2, num_heads=16, mlp_ratio=1.0,
                      T=16, layout='dvs')
    return _create_qkformer('qkformer_2_256_dvs', pretrained=pretrained, **dict(model_args, **kwargs))
