"""Spikingformer (Zhou et al. 2023, "Spikingformer: Spike-driven Residual Learning for Transformer-based Spiking
Neural Network") and its CML variant (Zhou et al. 2023, "Enhancing the Performance of Transformer-based Spiking Neural
Networks by SNN-optimized Downsampling with Precise Gradient Backpropagation").

Numerically faithful to https://github.com/zhouchenlin2096/Spikingformer and
https://github.com/zhouchenlin2096/Spikingformer-CML (one ``model.py`` per data set in each, written here as options):

- Spikingformer is Spikformer in pre-activation order: every branch starts with a LIF and ends with a BatchNorm, the
  residual stream carries real-valued BatchNorm outputs, and every convolution but the first sees binary spikes;
- the stem is the spiking tokenizer (no relative position embedding), /4 on CIFAR, /16 on DVS and ImageNet;
  ``cml=True`` max-pools the BatchNorm output before the next neuron instead of pooling spikes;
- the DVS files use tau = 1.5 (Spikingformer) or 1.75 (Spikingformer-CML) for every neuron: the ``tau`` option;
- attention scale 0.125 in every file; q/k/v projections without bias.

The originals build LayerNorms ``block.*.norm1`` / ``norm2`` that their forward never uses; snnzoo does not build them
and :func:`checkpoint_filter_fn` drops exactly these keys by name. Their ``DropPath`` modules are never applied; here
``drop_path_rate`` does apply stochastic depth, so use 0 (the default) to reproduce their training.
"""
import re

import torch.nn as nn
from timm.models import generate_default_cfgs

from ._builder import build_snn_model
from ._registry import register_model
from .spikformer import CIFAR_MEAN, CIFAR_STD, Spikformer, _cfg, remap_original_state_dict

__all__ = ['Spikingformer', 'checkpoint_filter_fn']


class Spikingformer(Spikformer):
    """Spikingformer: spiking tokenizer, ``depth`` pre-activation blocks (membrane shortcuts), a linear head.

    Same arguments, inputs and outputs as :class:`~snnzoo.models.spikformer.Spikformer`; the differences lie in the
    layers (:class:`~snnzoo.layers.patch_embed.SpikingTokenizer`, pre-activation
    :class:`~snnzoo.layers.attention.SpikingSelfAttention` and :class:`~snnzoo.layers.mlp.SpikingMlp`).
    ``forward_stream`` returns the real-valued stream ``[T, B, D, H/P, W/P]`` (``forward_features``: its mean over T).
    """

    preact = True


_SPIKINGFORMER_RENAMES = (
    (re.compile(r'^patch_embed\.block(\d)_(conv|bn)\.'), r'patch_embed.stages.\1.\2.'),
    (re.compile(r'^patch_embed\.proj_(conv|bn)\.'), r'patch_embed.stages.0.\1.'),
    (re.compile(r'^patch_embed\.proj(\d)_(conv|bn)\.'), r'patch_embed.stages.\1.\2.'),
    (re.compile(r'\.attn\.([qkv])_conv\.'), r'.attn.\1_proj.'),
    (re.compile(r'\.attn\.proj_(conv|bn)\.'), lambda m: f".attn.out_{'proj' if m[1] == 'conv' else 'bn'}."),
    (re.compile(r'\.mlp\.mlp([12])_conv\.'), r'.mlp.fc\1.'),
    (re.compile(r'\.mlp\.mlp([12])_bn\.'), r'.mlp.fc\1_bn.'),
)


def checkpoint_filter_fn(state_dict: dict, model: nn.Module) -> dict:
    """Map an original Spikingformer / Spikingformer-CML checkpoint to snnzoo's names (snnzoo's pass unchanged).

    ``patch_embed.block{0..4}_*`` (CIFAR files) or ``patch_embed.proj_*``, ``proj{1..4}_*`` (the others) ->
    ``patch_embed.stages.{0..4}.*``; ``attn.{q,k,v}_conv`` -> ``attn.{q,k,v}_proj``; ``attn.proj_{conv,bn}`` ->
    ``attn.out_{proj,bn}``; ``mlp.mlp{1,2}_conv`` -> ``mlp.fc{1,2}``, ``mlp.mlp{1,2}_bn`` -> ``mlp.fc{1,2}_bn``; drops
    ``block.*.norm1/norm2`` (never used by the originals' forward).
    """
    return remap_original_state_dict(state_dict, _SPIKINGFORMER_RENAMES)


def _create_spikingformer(variant: str, pretrained: bool = False, **kwargs) -> Spikingformer:
    return build_snn_model(Spikingformer, variant, pretrained, pretrained_filter_fn=checkpoint_filter_fn,
                           feature_cfg=dict(feature_cls='getter', out_indices=min(3, kwargs['depth'] + 1)), **kwargs)


_ORIGIN = dict(paper_ids='arXiv:2304.11954', origin_url='https://github.com/zhouchenlin2096/Spikingformer',
               license='apache-2.0')
_CML = dict(paper_ids='arXiv:2306.06271', origin_url='https://github.com/zhouchenlin2096/Spikingformer-CML')
_CIFAR = dict(num_classes=10, input_size=(3, 32, 32), pool_size=(8, 8), mean=CIFAR_MEAN, std=CIFAR_STD)
_DVS = dict(num_classes=10, input_size=(2, 128, 128), pool_size=(8, 8), mean=(0.0, 0.0), std=(1.0, 1.0))

default_cfgs = generate_default_cfgs({
    'spikingformer_8_384': _cfg(**_ORIGIN),
    'spikingformer_6_512': _cfg(**_ORIGIN),
    'spikingformer_8_512': _cfg(**_ORIGIN),
    'spikingformer_10_512': _cfg(**_ORIGIN),
    'spikingformer_8_768': _cfg(**_ORIGIN),
    'spikingformer_4_384_cifar': _cfg(**_CIFAR, **_ORIGIN),
    'spikingformer_4_256_cifar': _cfg(**_CIFAR, **_ORIGIN),
    'spikingformer_2_384_cifar': _cfg(**_CIFAR, **_ORIGIN),
    'spikingformer_2_256_dvs': _cfg(**_DVS, **_ORIGIN),
    'spikingformer_cml_4_384_cifar': _cfg(**_CIFAR, **_CML),
    'spikingformer_cml_2_256_dvs': _cfg(**_DVS, **_CML),
    'spikingformer_cml_8_384': _cfg(**_CML),
    'spikingformer_cml_8_512': _cfg(**_CML),
    'spikingformer_cml_8_768': _cfg(**_CML),
})

# the original ImageNet, CIFAR and DVS files, as keyword sets
_IMAGENET_ARGS = dict(img_size=224, patch_size=16, in_chans=3, num_classes=1000, num_heads=8, T=4)
_CIFAR_ARGS = dict(img_size=32, patch_size=4, in_chans=3, num_classes=10, T=4)
_DVS_ARGS = dict(img_size=128, patch_size=16, in_chans=2, num_classes=10, num_heads=16, T=16, tau=1.5)


@register_model
def spikingformer_8_384(pretrained: bool = False, **kwargs) -> Spikingformer:
    model_args = dict(_IMAGENET_ARGS, embed_dim=384, depth=8)
    return _create_spikingformer('spikingformer_8_384', pretrained, **dict(model_args, **kwargs))


@register_model
def spikingformer_6_512(pretrained: bool = False, **kwargs) -> Spikingformer:
    model_args = dict(_IMAGENET_ARGS, embed_dim=512, depth=6)
    return _create_spikingformer('spikingformer_6_512', pretrained, **dict(model_args, **kwargs))


@register_model
def spikingformer_8_512(pretrained: bool = False, **kwargs) -> Spikingformer:
    model_args = dict(_IMAGENET_ARGS, embed_dim=512, depth=8)
    return _create_spikingformer('spikingformer_8_512', pretrained, **dict(model_args, **kwargs))


@register_model
def spikingformer_10_512(pretrained: bool = False, **kwargs) -> Spikingformer:
    model_args = dict(_IMAGENET_ARGS, embed_dim=512, depth=10)
    return _create_spikingformer('spikingformer_10_512', pretrained, **dict(model_args, **kwargs))


@register_model
def spikingformer_8_768(pretrained: bool = False, **kwargs) -> Spikingformer:
    model_args = dict(_IMAGENET_ARGS, embed_dim=768, depth=8)
    return _create_spikingformer('spikingformer_8_768', pretrained, **dict(model_args, **kwargs))


@register_model
def spikingformer_4_384_cifar(pretrained: bool = False, **kwargs) -> Spikingformer:
    model_args = dict(_CIFAR_ARGS, embed_dim=384, depth=4, num_heads=12)
    return _create_spikingformer('spikingformer_4_384_cifar', pretrained, **dict(model_args, **kwargs))


@register_model
def spikingformer_4_256_cifar(pretrained: bool = False, **kwargs) -> Spikingformer:
    model_args = dict(_CIFAR_ARGS, embed_dim=256, depth=4, num_heads=8)
    return _create_spikingformer('spikingformer_4_256_cifar', pretrained, **dict(model_args, **kwargs))


@register_model
def spikingformer_2_384_cifar(pretrained: bool = False, **kwargs) -> Spikingformer:
    model_args = dict(_CIFAR_ARGS, embed_dim=384, depth=2, num_heads=12)
    return _create_spikingformer('spikingformer_2_384_cifar', pretrained, **dict(model_args, **kwargs))


@register_model
def spikingformer_2_256_dvs(pretrained: bool = False, **kwargs) -> Spikingformer:
    model_args = dict(_DVS_ARGS, embed_dim=256, depth=2)
    return _create_spikingformer('spikingformer_2_256_dvs', pretrained, **dict(model_args, **kwargs))


@register_model
def spikingformer_cml_4_384_cifar(pretrained: bool = False, **kwargs) -> Spikingformer:
    model_args = dict(_CIFAR_ARGS, embed_dim=384, depth=4, num_heads=12, cml=True)
    return _create_spikingformer('spikingformer_cml_4_384_cifar', pretrained, **dict(model_args, **kwargs))


@register_model
def spikingformer_cml_2_256_dvs(pretrained: bool = False, **kwargs) -> Spikingformer:
    model_args = dict(_DVS_ARGS, embed_dim=256, depth=2, tau=1.75, cml=True)
    return _create_spikingformer('spikingformer_cml_2_256_dvs', pretrained, **dict(model_args, **kwargs))


@register_model
def spikingformer_cml_8_384(pretrained: bool = False, **kwargs) -> Spikingformer:
    model_args = dict(_IMAGENET_ARGS, embed_dim=384, depth=8, cml=True)
    return _create_spikingformer('spikingformer_cml_8_384', pretrained, **dict(model_args, **kwargs))


@register_model
def spikingformer_cml_8_512(pretrained: bool = False, **kwargs) -> Spikingformer:
    model_args = dict(_IMAGENET_ARGS, embed_dim=512, depth=8, cml=True)
    return _create_spikingformer('spikingformer_cml_8_512', pretrained, **dict(model_args, **kwargs))


@register_model
def spikingformer_cml_8_768(pretrained: bool = False, **kwargs) -> Spikingformer:
    model_args = dict(_IMAGENET_ARGS, embed_dim=768, depth=8, cml=True)
    return _create_spikingformer('spikingformer_cml_8_768', pretrained, **dict(model_args, **kwargs))
