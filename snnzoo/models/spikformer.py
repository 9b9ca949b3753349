"""Spikformer (Zhou et al., "Spikformer: When Spiking Neural Network Meets Transformer", ICLR 2023) and its CML
variant (Zhou et al. 2023, "Enhancing the Performance of Transformer-based Spiking Neural Networks by SNN-optimized
Downsampling with Precise Gradient Backpropagation").

Numerically faithful to https://github.com/ZK-Zhou/spikformer (one ``model.py`` per data set, written here as options
of one model) and to ``cifar10/CML_Spikformer.py`` of https://github.com/zhouchenlin2096/Spikingformer-CML:

- the stem is the spiking patch splitting (SPS) with its relative position embedding, pooling /4 on CIFAR
  (``patch_size=4``) and /16 on CIFAR10-DVS and ImageNet (``patch_size=16``); ``cml=True`` pools before the neuron;
- every block is ``x = x + SSA(x); x = x + MLP(x)`` where both branches end in LIF spikes (a spike-element-wise ADD
  shortcut: the residual stream holds non-negative integer counts);
- the head averages the stream over tokens and time steps, then applies a linear classifier.

Differences between the original files become constructor options: ``qkv_bias`` (True only in the CIFAR file),
``attn_scale`` (0.25 in the CIFAR10-DVS file, 0.125 elsewhere), ``T`` (the ImageNet file hard-codes T = 4; here T = 4
is the default of the ImageNet models) and ``attn_proj`` / ``mlp_proj``, the module type the file stores its 1x1
projections in (``nn.Linear`` in the CIFAR file, ``Conv1d`` / ``Conv2d`` in the others: the same computation, kept so
that the original checkpoints load with their own parameter shapes).

The originals build parameters that their forward never uses: the LayerNorms ``block.*.norm1`` / ``norm2`` (every
file) and, in the CIFAR10-DVS file, ``pos_embed`` and ``norm``. snnzoo does not build them, and
:func:`checkpoint_filter_fn` drops exactly these keys by name when it loads an original checkpoint. The originals also
build ``DropPath`` modules that their forward never applies; here ``drop_path_rate`` does apply stochastic depth, so
use 0 (the default) to reproduce their training.
"""
import re
from functools import partial
from typing import Optional, Union

import torch
import torch.nn as nn
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import to_2tuple
from timm.models import generate_default_cfgs

from ..layers.attention import SpikingSelfAttention
from ..layers.drop import DropPath
from ..layers.mlp import SpikingMlp
from ..layers.neuron import LIFNode
from ..layers.patch_embed import SpikingPatchSplitting, SpikingTokenizer
from ..layers.temporal import to_time_major
from ._builder import build_snn_model
from ._heads import LinearHeadMixin, check_global_pool, init_trunc_normal_, pooled_head, unpooled
from ._registry import register_model

torch.fx.wrap('to_time_major')  # a leaf of FX graphs: input checks and layout choices are not traced

__all__ = ['Spikformer', 'SpikformerBlock', 'checkpoint_filter_fn']

CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2470, 0.2435, 0.2616)


class SpikformerBlock(nn.Module):
    """``x = x + SSA(x); x = x + MLP(x)`` on the stream ``[T, B, C, H, W]``.

    ``preact=False`` (Spikformer): both branches end in LIF spikes, the shortcut adds spikes (SEW ADD).
    ``preact=True`` (Spikingformer): both branches start with a LIF and end in a BatchNorm, the shortcut adds the
    real-valued BatchNorm outputs (a membrane shortcut).
    """

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, qkv_bias: bool = False,
                 attn_scale: float = 0.125, preact: bool = False, attn_proj: str = 'conv1d', mlp_proj: str = 'conv2d',
                 drop_path: float = 0.0, neuron_layer=None):
        super().__init__()
        self.attn = SpikingSelfAttention(dim, num_heads=num_heads, qkv_bias=qkv_bias, scale=attn_scale,
                                         preact=preact, proj_type=attn_proj, neuron_layer=neuron_layer)
        self.mlp = SpikingMlp(dim, int(dim * mlp_ratio), preact=preact, proj_type=mlp_proj,
                              neuron_layer=neuron_layer)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self.attn(x))
        return x + self.drop_path(self.mlp(x))


class Spikformer(LinearHeadMixin, nn.Module):
    """Spikformer: spiking patch splitting, ``depth`` blocks of spiking self-attention + spiking MLP, a linear head.

    Input: static images ``[B, C, H, W]`` (repeated over ``T`` steps) or event frames ``[B, T', C, H, W]`` (T' steps).
    Output: logits ``[B, num_classes]`` averaged over time, or ``[T, B, num_classes]`` with ``return_per_step=True``.

    Args:
        img_size: input size (int or (H, W)); inputs of another size are rejected.
        patch_size: total downsampling of the stem, 4 (CIFAR) or 16 (DVS, ImageNet); any power of two up to 16.
        in_chans: input channels (3 for images, 2 for DVS polarities).
        num_classes: classes of the head; 0 returns the pooled features ``[B, embed_dim]``.
        embed_dim: embedding width D (the stem widens in -> D/8 -> D/4 -> D/2 -> D).
        depth: number of blocks.
        num_heads: attention heads (``embed_dim % num_heads == 0``).
        mlp_ratio: MLP hidden width = int(D * mlp_ratio).
        T: time steps a static image is repeated for (event frames bring their own).
        qkv_bias: bias in the q/k/v projections (the original CIFAR file: True; DVS / ImageNet files: False).
        attn_scale: the attention's constant scale s (0.125; the original CIFAR10-DVS file uses 0.25).
        tau: membrane time constant of every LIF neuron.
        cml: ConvBN-MaxPool-LIF downsampling in the stem (pool the BatchNorm output, then fire).
        attn_proj: module type of the attention's 1x1 projections, ``'conv1d'`` or ``'linear'`` (the CIFAR file).
        mlp_proj: module type of the MLP's 1x1 projections, ``'conv2d'``, ``'conv1d'`` (the CIFAR10-DVS file) or
            ``'linear'`` (the CIFAR file).
        drop_rate: dropout on the pooled features before the head.
        drop_path_rate: stochastic depth rate, linearly increasing over the blocks (the originals apply none).
        global_pool: ``'avg'`` (tokens, then time) or ``''`` (``num_classes=0`` only: ``forward`` returns the unpooled
            features ``[B, D, H/P, W/P]``).
        backend: neuron backend, ``'auto'``, ``'torch'`` or ``'cupy'``.

    timm's feature API: ``forward_features(x)`` is the stream after the last block averaged over T,
    ``[B, D, H/P, W/P]`` (``return_per_step=True``: ``[T, B, D, H/P, W/P]``); the feature levels are the patch
    embedding and every block (all at stride P).
    """

    preact = False

    def __init__(self, img_size: Union[int, tuple] = 224, patch_size: int = 16, in_chans: int = 3,
                 num_classes: int = 1000, embed_dim: int = 384, depth: int = 8, num_heads: int = 8,
                 mlp_ratio: float = 4.0, T: int = 4, qkv_bias: bool = False, attn_scale: float = 0.125,
                 tau: float = 2.0, cml: bool = False, attn_proj: str = 'conv1d', mlp_proj: str = 'conv2d',
                 drop_rate: float = 0.0, drop_path_rate: float = 0.0, global_pool: str = 'avg',
                 backend: str = 'auto'):
        super().__init__()
        if not isinstance(embed_dim, int):
            raise TypeError(f"{type(self).__name__} is not hierarchical: embed_dim must be one int, got {embed_dim!r}")
        if not isinstance(depth, int) or depth < 1:
            raise ValueError(f"depth must be a positive int, got {depth!r}")
        if not isinstance(T, int) or T < 1:
            raise ValueError(f"T must be a positive int, got {T!r}")
        self.img_size = to_2tuple(img_size)
        self.patch_size = patch_size
        self.in_chans = in_chans
        self.num_classes = num_classes
        self.num_features = self.head_hidden_size = self.embed_dim = embed_dim
        self.global_pool = check_global_pool(global_pool, num_classes, type(self).__name__)
        self.T = T
        neuron_layer = partial(LIFNode, tau=tau, detach_reset=True, backend=backend)
        stem = SpikingTokenizer if self.preact else SpikingPatchSplitting
        self.patch_embed = stem(in_chans, embed_dim, patch_size, cml=cml, neuron_layer=neuron_layer)
        dpr = [drop_path_rate * i / max(depth - 1, 1) for i in range(depth)]
        self.block = nn.ModuleList([
            SpikformerBlock(embed_dim, num_heads, mlp_ratio, qkv_bias=qkv_bias, attn_scale=attn_scale,
                            preact=self.preact, attn_proj=attn_proj, mlp_proj=mlp_proj, drop_path=dpr[i],
                            neuron_layer=neuron_layer)
            for i in range(depth)])
        self.head_drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(embed_dim, num_classes) if num_classes > 0 else nn.Identity()
        self.feature_info = [dict(num_chs=embed_dim, reduction=patch_size, module=m)
                             for m in ['patch_embed'] + [f'block.{i}' for i in range(depth)]]
        self.apply(init_trunc_normal_)

    def forward_levels(self, x: torch.Tensor):
        """``[B, C, H, W]`` or ``[B, T', C, H, W]`` -> yields the per-step output of the patch embedding, then of every
        block, each ``[T, B, D, H/P, W/P]``."""
        x = to_time_major(x, self.T, self.in_chans, self.img_size, name=type(self).__name__)
        x = self.patch_embed(x)
        yield x
        for blk in self.block:
            x = blk(x)
            yield x

    def _prune_levels(self, last: int) -> None:
        self.block = self.block[:last]

    def set_input_size(self, img_size: Optional[Union[int, tuple]] = None, patch_size: Optional[int] = None) -> None:
        """timm's resize (as its ViTs): the stem is convolutional and there is no position embedding, so a new
        ``img_size`` only changes the input size that is checked; the stem's stride ``patch_size`` is fixed."""
        if patch_size is not None and patch_size != self.patch_size:
            raise ValueError(f"{type(self).__name__}: patch_size is the stem's pooling ({self.patch_size}) and cannot "
                             f"change after construction; build the model with patch_size={patch_size}")
        if img_size is not None:
            self.img_size = to_2tuple(img_size)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False, return_per_step: bool = False) -> torch.Tensor:
        """The stream ``[T, B, D, H', W']`` (or its mean over T ``[B, D, H', W']``) -> mean over tokens, then over time
        (unless ``return_per_step``), then the head; ``global_pool=''``: the unpooled features."""
        if not self.global_pool:
            return unpooled(x, return_per_step)
        return pooled_head(x.flatten(-2).mean(-1), self.head_drop, self.head, pre_logits, return_per_step)


_NEVER_USED = re.compile(r'pos_embed|norm\.(weight|bias)|block\.\d+\.norm[12]\.(weight|bias)')

_SPIKFORMER_RENAMES = (
    (re.compile(r'^patch_embed\.proj_(conv|bn)\.'), r'patch_embed.stages.0.\1.'),
    (re.compile(r'^patch_embed\.proj_(conv|bn)(\d)\.'), r'patch_embed.stages.\2.\1.'),
    (re.compile(r'^patch_embed\.block(\d)_(conv|bn)\.'), lambda m: f'patch_embed.stages.{int(m[1]) - 1}.{m[2]}.'),
    (re.compile(r'^patch_embed\.rpe_(conv|bn)\.'), r'patch_embed.rpe.\1.'),
    (re.compile(r'\.attn\.([qkv])_(linear|conv)\.'), r'.attn.\1_proj.'),
    (re.compile(r'\.attn\.proj_(linear|conv)\.'), r'.attn.out_proj.'),
    (re.compile(r'\.attn\.proj_bn\.'), r'.attn.out_bn.'),
    (re.compile(r'\.mlp\.fc([12])_(linear|conv)\.'), r'.mlp.fc\1.'),
)


def remap_original_state_dict(state_dict: dict, renames) -> dict:
    """Rename an original checkpoint's keys with ``renames`` (``(pattern, replacement)`` pairs, applied in turn) and
    drop, by name, the parameters the originals build but never use."""
    out = {}
    for key, value in state_dict.items():
        if _NEVER_USED.fullmatch(key):
            continue
        for pattern, replacement in renames:
            key = pattern.sub(replacement, key)
        out[key] = value
    return out


def checkpoint_filter_fn(state_dict: dict, model: nn.Module) -> dict:
    """Map an original Spikformer / CML-Spikformer checkpoint to snnzoo's names (snnzoo checkpoints pass unchanged).

    ``patch_embed.proj_conv{,1,2,3}`` / ``proj_bn*`` (CML: ``block{1..4}_*``) -> ``patch_embed.stages.{0..3}.*``;
    ``patch_embed.rpe_*`` -> ``patch_embed.rpe.*``; ``attn.{q,k,v}_{linear,conv}`` -> ``attn.{q,k,v}_proj``;
    ``attn.proj_{linear,conv,bn}`` -> ``attn.out_{proj,bn}``; ``mlp.fc{1,2}_{linear,conv}`` -> ``mlp.fc{1,2}``;
    drops ``block.*.norm1/norm2``, ``pos_embed`` and ``norm`` (never used by the originals' forward).
    """
    return remap_original_state_dict(state_dict, _SPIKFORMER_RENAMES)


def _create_spikformer(variant: str, pretrained: bool = False, **kwargs) -> Spikformer:
    return build_snn_model(Spikformer, variant, pretrained, pretrained_filter_fn=checkpoint_filter_fn,
                           feature_cfg=dict(feature_cls='getter', out_indices=min(3, kwargs['depth'] + 1)), **kwargs)


def _cfg(**kwargs) -> dict:
    return {
        'num_classes': 1000, 'input_size': (3, 224, 224), 'pool_size': (14, 14), 'crop_pct': 1.0,
        'interpolation': 'bicubic', 'fixed_input_size': True, 'mean': IMAGENET_DEFAULT_MEAN,
        'std': IMAGENET_DEFAULT_STD, 'first_conv': 'patch_embed.stages.0.conv', 'classifier': 'head',
        'paper_ids': 'arXiv:2209.15425', 'origin_url': 'https://github.com/ZK-Zhou/spikformer', **kwargs,
    }


_CIFAR = dict(num_classes=10, input_size=(3, 32, 32), pool_size=(8, 8), mean=CIFAR_MEAN, std=CIFAR_STD)
_DVS = dict(num_classes=10, input_size=(2, 128, 128), pool_size=(8, 8), mean=(0.0, 0.0), std=(1.0, 1.0))
_CML = dict(paper_ids='arXiv:2306.06271', origin_url='https://github.com/zhouchenlin2096/Spikingformer-CML')

default_cfgs = generate_default_cfgs({
    'spikformer_8_384': _cfg(),
    'spikformer_6_512': _cfg(),
    'spikformer_8_512': _cfg(),
    'spikformer_10_512': _cfg(),
    'spikformer_8_768': _cfg(),
    'spikformer_4_384_cifar': _cfg(**_CIFAR),
    'spikformer_4_256_cifar': _cfg(**_CIFAR),
    'spikformer_2_384_cifar': _cfg(**_CIFAR),
    'spikformer_2_256_dvs': _cfg(**_DVS),
    'spikformer_cml_4_384_cifar': _cfg(**_CIFAR, **_CML),
    'spikformer_1_64_digits': _cfg(num_classes=10, input_size=(1, 8, 8), pool_size=(4, 4), mean=(0.0,), std=(1.0,),
                                   file='spikformer_1_64_digits.digits-2e8ea8e55045e51d.safetensors'),
})

# the original ImageNet, CIFAR and CIFAR10-DVS files, as keyword sets
_IMAGENET_ARGS = dict(img_size=224, patch_size=16, in_chans=3, num_classes=1000, num_heads=8, T=4)
_CIFAR_ARGS = dict(img_size=32, patch_size=4, in_chans=3, num_classes=10, qkv_bias=True, T=4,
                   attn_proj='linear', mlp_proj='linear')
_DVS_ARGS = dict(img_size=128, patch_size=16, in_chans=2, num_classes=10, num_heads=16, attn_scale=0.25, T=16,
                 mlp_proj='conv1d')


@register_model
def spikformer_8_384(pretrained: bool = False, **kwargs) -> Spikformer:
    model_args = dict(_IMAGENET_ARGS, embed_dim=384, depth=8)
    return _create_spikformer('spikformer_8_384', pretrained, **dict(model_args, **kwargs))


@register_model
def spikformer_6_512(pretrained: bool = False, **kwargs) -> Spikformer:
    model_args = dict(_IMAGENET_ARGS, embed_dim=512, depth=6)
    return _create_spikformer('spikformer_6_512', pretrained, **dict(model_args, **kwargs))


@register_model
def spikformer_8_512(pretrained: bool = False, **kwargs) -> Spikformer:
    model_args = dict(_IMAGENET_ARGS, embed_dim=512, depth=8)
    return _create_spikformer('spikformer_8_512', pretrained, **dict(model_args, **kwargs))


@register_model
def spikformer_10_512(pretrained: bool = False, **kwargs) -> Spikformer:
    model_args = dict(_IMAGENET_ARGS, embed_dim=512, depth=10)
    return _create_spikformer('spikformer_10_512', pretrained, **dict(model_args, **kwargs))


@register_model
def spikformer_8_768(pretrained: bool = False, **kwargs) -> Spikformer:
    model_args = dict(_IMAGENET_ARGS, embed_dim=768, depth=8)
    return _create_spikformer('spikformer_8_768', pretrained, **dict(model_args, **kwargs))


@register_model
def spikformer_4_384_cifar(pretrained: bool = False, **kwargs) -> Spikformer:
    model_args = dict(_CIFAR_ARGS, embed_dim=384, depth=4, num_heads=12)
    return _create_spikformer('spikformer_4_384_cifar', pretrained, **dict(model_args, **kwargs))


@register_model
def spikformer_4_256_cifar(pretrained: bool = False, **kwargs) -> Spikformer:
    model_args = dict(_CIFAR_ARGS, embed_dim=256, depth=4, num_heads=8)
    return _create_spikformer('spikformer_4_256_cifar', pretrained, **dict(model_args, **kwargs))


@register_model
def spikformer_2_384_cifar(pretrained: bool = False, **kwargs) -> Spikformer:
    model_args = dict(_CIFAR_ARGS, embed_dim=384, depth=2, num_heads=12)
    return _create_spikformer('spikformer_2_384_cifar', pretrained, **dict(model_args, **kwargs))


@register_model
def spikformer_2_256_dvs(pretrained: bool = False, **kwargs) -> Spikformer:
    model_args = dict(_DVS_ARGS, embed_dim=256, depth=2)
    return _create_spikformer('spikformer_2_256_dvs', pretrained, **dict(model_args, **kwargs))


@register_model
def spikformer_cml_4_384_cifar(pretrained: bool = False, **kwargs) -> Spikformer:
    model_args = dict(_CIFAR_ARGS, embed_dim=384, depth=4, num_heads=12, cml=True)
    return _create_spikformer('spikformer_cml_4_384_cifar', pretrained, **dict(model_args, **kwargs))


@register_model
def spikformer_1_64_digits(pretrained: bool = False, **kwargs) -> Spikformer:
    """The main job's Spikformer (``snnzoo-train``): scikit-learn's 8x8 digits, T=4, 16 tokens of width 64."""
    model_args = dict(_CIFAR_ARGS, img_size=8, patch_size=2, in_chans=1, embed_dim=64, depth=1, num_heads=4)
    return _create_spikformer('spikformer_1_64_digits', pretrained, **dict(model_args, **kwargs))
