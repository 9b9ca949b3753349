"""Spike-driven Transformer v1 (Yao et al., "Spike-driven Transformer", NeurIPS 2023, arXiv:2307.01694).

A faithful re-implementation of BICLab/Spike-Driven-Transformer (``model/spikeformer.py``, ``module/sps.py``,
``module/ms_conv.py``); its checkpoints load with :func:`snnzoo.load_checkpoint`.

Layout: the input becomes ``[T, B, C, H, W]``; every conv/BN runs on ``[T*B, ...]`` (BN statistics over T*B*H*W), every
neuron over T. The stream between blocks is real-valued (membrane-shortcut design: each branch starts with a neuron).

    stem      conv3x3-BN-LIF [pool] -> conv3x3-BN-LIF [pool] -> conv3x3-BN-LIF [pool] -> conv3x3-BN [pool] = F,
              out = F + BN(conv3x3(LIF(F)))            (channels D/8, D/4, D/2, D; pools per ``pooling_stat``)
    block     x = x + SDSA(x);  x = x + MLP(x)         MLP = LIF-conv1x1-BN-LIF-conv1x1-BN (hidden = mlp_ratio*D)
    head      mean over tokens -> LIF -> Linear, per step; logits = mean over T
"""
from functools import partial
from typing import Callable, Optional

import torch
import torch.nn as nn
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.models import generate_default_cfgs

from ..layers.drop import DropPath
from ..layers.neuron import LIFNode, ParametricLIFNode
from ..layers.sdsa import SpikeDrivenSelfAttention
from ..layers.temporal import channels_last_frames, per_step, to_time_major
from ._builder import build_snn_model
from ._heads import LinearHeadMixin, check_global_pool, init_trunc_normal_, spiking_head_input, unpooled
from ._registry import register_model

torch.fx.wrap('channels_last_frames')  # a leaf of FX graphs: input checks and layout choices are not traced
torch.fx.wrap('to_time_major')

__all__ = ['SpikeDrivenTransformer', 'SDTPatchEmbed', 'SDTMlp', 'SDTBlock', 'checkpoint_filter_fn']

SPIKE_MODES = ('lif', 'plif')


class SDTPatchEmbed(nn.Module):
    """Spiking patch splitting (the original's ``MS_SPS``): ``[T, B, in_chans, H, W] -> [T, B, D, H', W']``.

    Four conv3x3-BN stages (D/8, D/4, D/2, D channels); the first three end with a neuron, the fourth does not.
    ``pooling_stat[i] == '1'`` adds a 3x3 stride-2 max-pool after stage i: on the spikes for stages 0-2, on the BN
    output of stage 3 (before its neuron). Output ``F + BN(conv3x3(LIF(F)))``, real-valued (F = stage-3 output).
    Computed on channels-last frames on the CPU (:func:`~snnzoo.layers.temporal.channels_last_frames`); the output is
    contiguous.
    """

    def __init__(self, in_chans: int, embed_dim: int, pooling_stat: str = '1111',
                 neuron_layer: Optional[Callable[..., nn.Module]] = None):
        super().__init__()
        neuron_layer = neuron_layer or partial(LIFNode, tau=2.0, detach_reset=True)
        self.pooling = tuple(c == '1' for c in pooling_stat)
        dims = (in_chans, embed_dim // 8, embed_dim // 4, embed_dim // 2, embed_dim)
        self.proj_conv = nn.Conv2d(dims[0], dims[1], 3, padding=1, bias=False)
        self.proj_bn = nn.BatchNorm2d(dims[1])
        self.proj_lif = neuron_layer()
        self.proj_conv1 = nn.Conv2d(dims[1], dims[2], 3, padding=1, bias=False)
        self.proj_bn1 = nn.BatchNorm2d(dims[2])
        self.proj_lif1 = neuron_layer()
        self.proj_conv2 = nn.Conv2d(dims[2], dims[3], 3, padding=1, bias=False)
        self.proj_bn2 = nn.BatchNorm2d(dims[3])
        self.proj_lif2 = neuron_layer()
        self.proj_conv3 = nn.Conv2d(dims[3], dims[4], 3, padding=1, bias=False)
        self.proj_bn3 = nn.BatchNorm2d(dims[4])
        self.proj_lif3 = neuron_layer()
        self.rpe_conv = nn.Conv2d(dims[4], dims[4], 3, padding=1, bias=False)
        self.rpe_bn = nn.BatchNorm2d(dims[4])
        self.pool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)

    def _maybe_pool(self, x: torch.Tensor, stage: int) -> torch.Tensor:
        return per_step(x, self.pool) if self.pooling[stage] else x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = channels_last_frames(x)
        x = self._maybe_pool(self.proj_lif(per_step(x, self.proj_conv, self.proj_bn)), 0)
        x = self._maybe_pool(self.proj_lif1(per_step(x, self.proj_conv1, self.proj_bn1)), 1)
        x = self._maybe_pool(self.proj_lif2(per_step(x, self.proj_conv2, self.proj_bn2)), 2)
        feat = self._maybe_pool(per_step(x, self.proj_conv3, self.proj_bn3), 3)
        return (per_step(self.proj_lif3(feat), self.rpe_conv, self.rpe_bn) + feat).contiguous()


class SDTMlp(nn.Module):
    """MLP branch (``MS_MLP_Conv``): LIF-conv1x1-BN-LIF-conv1x1-BN on ``[T, B, C, H, W]``, convs with bias.

    Branch = BN(conv(LIF(h))) with h = BN(conv(LIF(X))). When ``hidden_dim == dim`` the original adds an inner
    shortcut around the first layer (its output is X + h + BN(conv(LIF(X + h)))), so the branch is then
    h + BN(conv(LIF(X + h))).
    """

    def __init__(self, dim: int, hidden_dim: int, neuron_layer: Optional[Callable[..., nn.Module]] = None):
        super().__init__()
        neuron_layer = neuron_layer or partial(LIFNode, tau=2.0, detach_reset=True)
        self.inner_shortcut = hidden_dim == dim
        self.fc1_lif = neuron_layer()
        self.fc1_conv = nn.Conv2d(dim, hidden_dim, kernel_size=1)
        self.fc1_bn = nn.BatchNorm2d(hidden_dim)
        self.fc2_lif = neuron_layer()
        self.fc2_conv = nn.Conv2d(hidden_dim, dim, kernel_size=1)
        self.fc2_bn = nn.BatchNorm2d(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = per_step(self.fc1_lif(x), self.fc1_conv, self.fc1_bn)
        if self.inner_shortcut:
            return h + per_step(self.fc2_lif(x + h), self.fc2_conv, self.fc2_bn)
        return per_step(self.fc2_lif(h), self.fc2_conv, self.fc2_bn)


class SDTBlock(nn.Module):
    """``x = x + SDSA(x); x = x + MLP(x)`` on the real-valued stream ``[T, B, C, H, W]``.

    ``drop_path``: stochastic depth on both branches (per sample, shared over T; the original never applies any).
    """

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0,
                 neuron_layer: Optional[Callable[..., nn.Module]] = None, dvs_mode: bool = False,
                 drop_path: float = 0.0):
        super().__init__()
        self.attn = SpikeDrivenSelfAttention(dim, num_heads, neuron_layer=neuron_layer, dvs_mode=dvs_mode)
        self.mlp = SDTMlp(dim, int(dim * mlp_ratio), neuron_layer=neuron_layer)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self.attn(x))
        return x + self.drop_path(self.mlp(x))


class SpikeDrivenTransformer(LinearHeadMixin, nn.Module):
    """Spike-driven Transformer v1.

    Args:
        img_size: default input size (sets the data config; the network is fully convolutional and accepts any size).
        in_chans: input channels (3 for images, 2 for DVS polarity frames).
        num_classes: classes (0: ``forward`` returns the pooled features).
        embed_dim: channels D (``D % 8 == 0`` and ``D % num_heads == 0``).
        depth: number of blocks.
        num_heads: SDSA heads (they only change the computation in ``dvs_mode``).
        mlp_ratio: MLP hidden channels / D.
        T: time steps for static images (event input ``[B, T, C, H, W]`` brings its own T).
        pooling_stat: four '0'/'1' characters, a 3x3 stride-2 max-pool after each stem stage: ``'1111'`` (ImageNet,
            16x downsampling), ``'0011'`` (CIFAR, CIFAR10-DVS), ``'0111'`` (DVS128 Gesture).
        spike_mode: ``'lif'`` (LIF, tau 2) or ``'plif'`` (parametric LIF, init_tau 2, one learnt decay per neuron
            layer) for every neuron, as the original's ``--spike-mode``.
        dvs_mode: the original's CIFAR10-DVS attention variant (3x3 max-pools inside SDSA, see
            :class:`~snnzoo.layers.sdsa.SpikeDrivenSelfAttention`).
        drop_rate: dropout before the classifier (timm's head dropout; the original has none: keep 0 to reproduce it).
        drop_path_rate: stochastic depth, rising linearly to this rate over the blocks (per sample, shared over T).
            The original builds DropPath modules but never applies them (its configs' 0.2 has no effect): keep 0 to
            reproduce it.
        global_pool: ``'avg'`` or ``''`` (``num_classes=0`` only: ``forward`` returns the unpooled features).
        backend: neuron backend, ``'auto'``, ``'torch'`` or ``'cupy'``.

    timm's feature API: the feature levels are the patch embedding and every block (all at the stem's stride);
    ``forward_features(x)`` is the stream after the last block averaged over T, ``[B, D, H', W']``
    (``return_per_step=True``: ``[T, B, D, H', W']``). The head fires a LIF per step, so it is not linear in the
    stream: ``forward_head`` on the per-step stream is exactly ``forward``; on the time-averaged features it drives the
    head neuron with that average as a constant input for ``T`` steps (a rate-coded reading of the features).

    Every neuron has V_reset 0, detach_reset and the sigmoid surrogate (alpha 4); threshold 1, except 0.5 for SDSA's KV
    neuron. The original's TET option (per-step logits) is ``forward(x, return_per_step=True)`` here.
    Differences from the original: the never-used ``talking_heads`` conv, ``attn_lif`` and ``rpe_lif`` are not built
    (their checkpoint keys are dropped by name), ``drop_path_rate`` acts, and ``forward`` returns a tensor instead of
    ``(logits, hook)``.
    """

    def __init__(self, img_size=224, in_chans: int = 3, num_classes: int = 1000, embed_dim: int = 512, depth: int = 8,
                 num_heads: int = 8, mlp_ratio: float = 4.0, T: int = 4, pooling_stat: str = '1111',
                 spike_mode: str = 'lif', dvs_mode: bool = False, drop_rate: float = 0.0,
                 drop_path_rate: float = 0.0, global_pool: str = 'avg', backend: str = 'auto'):
        super().__init__()
        if spike_mode not in SPIKE_MODES:
            raise ValueError(f"unknown spike_mode {spike_mode!r}; valid modes are {list(SPIKE_MODES)}")
        if not (isinstance(pooling_stat, str) and len(pooling_stat) == 4 and set(pooling_stat) <= {'0', '1'}):
            raise ValueError(f"pooling_stat must be four '0'/'1' characters (e.g. '1111'), got {pooling_stat!r}")
        if embed_dim % 8 or embed_dim % num_heads:
            raise ValueError(f"embed_dim ({embed_dim}) must be divisible by 8 (the stem's widths D/8, D/4, D/2) and "
                             f"by num_heads ({num_heads})")
        if T < 1:
            raise ValueError(f"T must be >= 1, got {T}")
        if spike_mode == 'lif':
            neuron_layer = partial(LIFNode, tau=2.0, detach_reset=True, backend=backend)
        else:
            neuron_layer = partial(ParametricLIFNode, init_tau=2.0, detach_reset=True, backend=backend)
        self.img_size = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
        self.in_chans = in_chans
        self.num_classes = num_classes
        self.T = T
        self.num_features = self.head_hidden_size = embed_dim
        self.global_pool = check_global_pool(global_pool, num_classes, type(self).__name__)
        self.patch_embed = SDTPatchEmbed(in_chans, embed_dim, pooling_stat, neuron_layer)
        rates = torch.linspace(0, drop_path_rate, depth, device='cpu').tolist()
        self.blocks = nn.ModuleList([SDTBlock(embed_dim, num_heads, mlp_ratio, neuron_layer, dvs_mode, rate)
                                     for rate in rates])
        self.head_lif = neuron_layer()
        self.head_drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(embed_dim, num_classes) if num_classes > 0 else nn.Identity()
        reduction = 2 ** pooling_stat.count('1')
        self.feature_info = [dict(num_chs=embed_dim, reduction=reduction, module=m)
                             for m in ['patch_embed'] + [f'blocks.{i}' for i in range(depth)]]
        self.apply(partial(init_trunc_normal_, types=nn.Conv2d))  # as the original: the head keeps PyTorch's init

    def forward_levels(self, x: torch.Tensor):
        """``[B, C, H, W]`` or ``[B, T, C, H, W]`` -> yields the per-step output of the patch embedding, then of every
        block, each the real-valued stream ``[T, B, D, H', W']``."""
        x = to_time_major(x, self.T, self.in_chans, name=type(self).__name__)
        x = self.patch_embed(x)
        yield x
        for block in self.blocks:
            x = block(x)
            yield x

    def _prune_levels(self, last: int) -> None:
        self.blocks = self.blocks[:last]

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False, return_per_step: bool = False) -> torch.Tensor:
        """The stream ``[T, B, D, H', W']`` -> logits ``[B, num_classes]`` (mean over T) or ``[T, B, num_classes]``.

        ``pre_logits=True`` returns the head neuron's spikes averaged over T, ``[B, D]`` (``[T, B, D]`` per step).
        Time-averaged features ``[B, D, H', W']`` drive the head neuron as a constant input for ``T`` steps.
        ``global_pool=''``: the unpooled features.
        """
        if not self.global_pool:
            return unpooled(x, return_per_step)
        x = self.head_drop(self.head_lif(spiking_head_input(x, self.T)))
        if not pre_logits:
            x = self.head(x)
        return x if return_per_step else x.mean(0)


_UNUSED = ('.attn.talking_heads.weight', '.attn.attn_lif.w', 'patch_embed.rpe_lif.w')


def checkpoint_filter_fn(state_dict: dict, model: nn.Module) -> dict:
    """Map an original Spike-Driven-Transformer state_dict to snnzoo's names.

    ``block.i.`` -> ``blocks.i.``, ``attn.talking_heads_lif.`` -> ``attn.kv_lif.``; drops, by name, the parameters the
    original builds but never uses (every ``attn.talking_heads.weight``, and with PLIF ``attn.attn_lif.w`` and
    ``patch_embed.rpe_lif.w``). snnzoo's own state_dicts pass unchanged.
    """
    out = {}
    for k, v in state_dict.items():
        if k.endswith(_UNUSED):
            continue
        if k.startswith('block.'):
            k = 'blocks.' + k[len('block.'):]
        out[k.replace('.attn.talking_heads_lif.', '.attn.kv_lif.')] = v
    return out


def _create_sdt(variant: str, pretrained: bool = False, **kwargs) -> SpikeDrivenTransformer:
    return build_snn_model(SpikeDrivenTransformer, variant, pretrained, pretrained_filter_fn=checkpoint_filter_fn,
                           feature_cfg=dict(feature_cls='getter', out_indices=min(3, kwargs['depth'] + 1)), **kwargs)


def _cfg(**kwargs) -> dict:
    return {
        'url': '', 'num_classes': 1000, 'input_size': (3, 224, 224), 'pool_size': (14, 14), 'crop_pct': 0.9,
        'interpolation': 'bicubic', 'mean': IMAGENET_DEFAULT_MEAN, 'std': IMAGENET_DEFAULT_STD,
        'first_conv': 'patch_embed.proj_conv', 'classifier': 'head', 'paper_ids': 'arXiv:2307.01694',
        'origin_url': 'https://github.com/BICLab/Spike-Driven-Transformer', **kwargs,
    }


_CIFAR = dict(num_classes=10, input_size=(3, 32, 32), pool_size=(8, 8), crop_pct=1.0, mean=(0.4914, 0.4822, 0.4465),
              std=(0.2470, 0.2435, 0.2616))
_DVS = dict(crop_pct=1.0, interpolation='nearest', mean=(0.0, 0.0), std=(1.0, 1.0))

default_cfgs = generate_default_cfgs({
    'sdt_8_384': _cfg(),
    'sdt_6_512': _cfg(),
    'sdt_8_512': _cfg(),
    'sdt_10_512': _cfg(),
    'sdt_8_768': _cfg(),
    'sdt_2_512_cifar': _cfg(**_CIFAR),
    'sdt_2_256_cifar10dvs': _cfg(num_classes=10, input_size=(2, 64, 64), pool_size=(16, 16), **_DVS),
    'sdt_2_256_gesture': _cfg(num_classes=11, input_size=(2, 128, 128), pool_size=(16, 16), **_DVS),
})


@register_model
def sdt_8_384(pretrained: bool = False, **kwargs) -> SpikeDrivenTransformer:
    """SDT-8-384, ImageNet (T=4, 16.8M)."""
    model_args = dict(embed_dim=384, depth=8, num_heads=8, T=4, pooling_stat='1111')
    return _create_sdt('sdt_8_384', pretrained, **dict(model_args, **kwargs))


@register_model
def sdt_6_512(pretrained: bool = False, **kwargs) -> SpikeDrivenTransformer:
    """SDT-6-512, ImageNet (T=4, 23.4M)."""
    model_args = dict(embed_dim=512, depth=6, num_heads=8, T=4, pooling_stat='1111')
    return _create_sdt('sdt_6_512', pretrained, **dict(model_args, **kwargs))


@register_model
def sdt_8_512(pretrained: bool = False, **kwargs) -> SpikeDrivenTransformer:
    """SDT-8-512, ImageNet (T=4, 29.7M)."""
    model_args = dict(embed_dim=512, depth=8, num_heads=8, T=4, pooling_stat='1111')
    return _create_sdt('sdt_8_512', pretrained, **dict(model_args, **kwargs))


@register_model
def sdt_10_512(pretrained: bool = False, **kwargs) -> SpikeDrivenTransformer:
    """SDT-10-512, ImageNet (T=4, 36.0M)."""
    model_args = dict(embed_dim=512, depth=10, num_heads=8, T=4, pooling_stat='1111')
    return _create_sdt('sdt_10_512', pretrained, **dict(model_args, **kwargs))


@register_model
def sdt_8_768(pretrained: bool = False, **kwargs) -> SpikeDrivenTransformer:
    """SDT-8-768, ImageNet (T=4, 66.3M)."""
    model_args = dict(embed_dim=768, depth=8, num_heads=8, T=4, pooling_stat='1111')
    return _create_sdt('sdt_8_768', pretrained, **dict(model_args, **kwargs))


@register_model
def sdt_2_512_cifar(pretrained: bool = False, **kwargs) -> SpikeDrivenTransformer:
    """SDT-2-512, CIFAR-10/100 32x32 (T=4, 10.2M; ``embed_dim=256`` gives the 2-256 model)."""
    model_args = dict(embed_dim=512, depth=2, num_heads=8, T=4, pooling_stat='0011', img_size=32, num_classes=10)
    return _create_sdt('sdt_2_512_cifar', pretrained, **dict(model_args, **kwargs))


@register_model
def sdt_2_256_cifar10dvs(pretrained: bool = False, **kwargs) -> SpikeDrivenTransformer:
    """SDT-2-256, CIFAR10-DVS (T=10 frames resized to 64x64, dvs_mode; trained with TET: ``return_per_step=True``)."""
    model_args = dict(embed_dim=256, depth=2, num_heads=8, T=10, pooling_stat='0011', dvs_mode=True, in_chans=2,
                      img_size=64, num_classes=10)
    return _create_sdt('sdt_2_256_cifar10dvs', pretrained, **dict(model_args, **kwargs))


@register_model
def sdt_2_256_gesture(pretrained: bool = False, **kwargs) -> SpikeDrivenTransformer:
    """SDT-2-256, DVS128 Gesture (T=16 frames, 128x128)."""
    model_args = dict(embed_dim=256, depth=2, num_heads=8, T=16, pooling_stat='0111', in_chans=2, img_size=128,
                      num_classes=11)
    return _create_sdt('sdt_2_256_gesture', pretrained, **dict(model_args, **kwargs))
