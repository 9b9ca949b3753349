"""Building blocks of Meta-SpikeFormer (Spike-driven Transformer V2, Yao et al., ICLR 2024, arXiv:2404.03663).

All blocks take and return the real-valued stream ``[T, B, C, H, W]``; each branch starts with a spiking neuron
(membrane shortcut), so every conv sees binary spikes except the very first one. Convs and BNs run on ``[T*B, ...]``.

- :class:`ConvBNDownsample`   [LIF] -> conv (with bias, stride s) -> BN
- :class:`SepConv`            LIF -> pw conv 1x1 (C -> 2C) -> BN -> LIF -> dw conv 7x7 -> pw conv 1x1 (2C -> C) -> BN
- :class:`SpikingConvBlock`   x = x + SepConv(x);  x = x + BN(conv3x3(LIF(BN(conv3x3(LIF(x))))))  (C -> rC -> C)
- :class:`RepConv`            conv1x1 -> BN with a BN(0)-valued border -> dw conv3x3 (no padding) -> conv1x1 -> BN
- :class:`SpikeDrivenSelfAttentionV2`  linear spike attention Q (K^T V) * scale with RepConv projections
- :class:`MetaFormerBlock`    x = x + attn(x);  x = x + mlp(x), mlp = LIF-conv1d-BN1d-LIF-conv1d-BN1d over the tokens

The spiking function is binary: every neuron is a LIF (tau 2, V_reset 0, detach_reset, sigmoid surrogate alpha 4) with
threshold 1, except the attention output neuron (threshold 0.5), as in the classification code of
BICLab/Spike-Driven-Transformer-V2.
"""
from functools import partial
from typing import Callable, Optional

import torch
import torch.nn as nn

from .drop import DropPath
from .mlp import SpikingMlp
from .neuron import LIFNode
from .sdsa import split_heads
from .temporal import MultiStep, per_step

__all__ = ['BNAndPad2d', 'RepConv', 'SepConv', 'SpikingConvBlock', 'SpikeDrivenSelfAttentionV2', 'MetaFormerBlock',
           'ConvBNDownsample']

NeuronFactory = Optional[Callable[..., nn.Module]]


def _default_neuron(neuron_layer: NeuronFactory) -> Callable[..., nn.Module]:
    return neuron_layer or partial(LIFNode, tau=2.0, detach_reset=True)


class BNAndPad2d(nn.Module):
    """BatchNorm2d, then a border of ``pad`` pixels filled per channel with the BN of a zero input.

    border value = bias - running_mean * weight / sqrt(running_var + eps), from the RUNNING statistics even in train
    mode (taken after this batch has updated them) and without gradient to weight/bias, as the original. This makes
    conv1x1 -> BNAndPad -> conv3x3(padding 0) equal to a zero-padded conv3x3 applied after the BN in eval mode (the
    re-parameterisation RepConv is named after). Input ``[N, C, H, W]`` -> ``[N, C, H + 2 pad, W + 2 pad]``.
    """

    def __init__(self, num_features: int, pad: int = 1, eps: float = 1e-5, momentum: float = 0.1):
        super().__init__()
        self.bn = nn.BatchNorm2d(num_features, eps=eps, momentum=momentum)
        self.pad = pad

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn(x)
        if self.pad == 0:
            return out
        bn = self.bn
        border = bn.bias.detach() - bn.running_mean * bn.weight.detach() / torch.sqrt(bn.running_var + bn.eps)
        p = self.pad
        n, c, h, w = out.shape
        padded = border.view(1, c, 1, 1).expand(n, c, h + 2 * p, w + 2 * p).clone()
        padded[:, :, p:p + h, p:p + w] = out
        return padded


class RepConv(nn.Module):
    """Re-parameterisable 3x3 conv on ``[N, C_in, H, W]`` -> ``[N, C_out, H, W]``, no biases.

    ``body = (conv1x1 C_in->C_in, BNAndPad2d(C_in), (dw conv3x3 padding 0, conv1x1 C_in->C_out, BN(C_out)))``;
    the module names follow the original so that its checkpoints load unchanged.
    """

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(in_channels, in_channels, 1, bias=False),
            BNAndPad2d(in_channels, pad=1),
            nn.Sequential(
                nn.Conv2d(in_channels, in_channels, 3, padding=0, groups=in_channels, bias=False),
                nn.Conv2d(in_channels, out_channels, 1, bias=False),
                nn.BatchNorm2d(out_channels),
            ),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


class SepConv(nn.Module):
    """Inverted separable conv branch (MobileNetV2 style) on ``[T, B, C, H, W]``.

    LIF -> pwconv1 1x1 (C -> eC) -> BN -> LIF -> dwconv kxk depthwise -> pwconv2 1x1 (eC -> C) -> BN; no biases.
    """

    def __init__(self, dim: int, expansion_ratio: float = 2, kernel_size: int = 7, neuron_layer: NeuronFactory = None):
        super().__init__()
        neuron_layer = _default_neuron(neuron_layer)
        hidden = int(expansion_ratio * dim)
        self.lif1 = neuron_layer()
        self.pwconv1 = nn.Conv2d(dim, hidden, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(hidden)
        self.lif2 = neuron_layer()
        self.dwconv = nn.Conv2d(hidden, hidden, kernel_size, padding=kernel_size // 2, groups=hidden, bias=False)
        self.pwconv2 = nn.Conv2d(hidden, dim, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = per_step(self.lif1(x), self.pwconv1, self.bn1)
        return per_step(self.lif2(x), self.dwconv, self.pwconv2, self.bn2)


class SpikingConvBlock(nn.Module):
    """Meta-SpikeFormer's conv block (``MS_ConvBlock``) on ``[T, B, C, H, W]``.

    x = x + SepConv(x);  x = x + BN(conv3x3(LIF(BN(conv3x3(LIF(x))))))  with channels C -> mlp_ratio*C -> C, no biases.
    ``drop_path``: stochastic depth on both branches (the original never applies any).
    """

    def __init__(self, dim: int, mlp_ratio: float = 4.0, neuron_layer: NeuronFactory = None, drop_path: float = 0.0):
        super().__init__()
        neuron_layer = _default_neuron(neuron_layer)
        hidden = int(dim * mlp_ratio)
        self.sep_conv = SepConv(dim, neuron_layer=neuron_layer)
        self.lif1 = neuron_layer()
        self.conv1 = nn.Conv2d(dim, hidden, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(hidden)
        self.lif2 = neuron_layer()
        self.conv2 = nn.Conv2d(hidden, dim, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(dim)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.drop_path(self.sep_conv(x)) + x
        h = per_step(self.lif1(x), self.conv1, self.bn1)
        return x + self.drop_path(per_step(self.lif2(h), self.conv2, self.bn2))


class SpikeDrivenSelfAttentionV2(nn.Module):
    """Meta-SpikeFormer's spike-driven self-attention (``MS_Attention_RepConv_qkv_id``) branch, ``[T, B, C, H, W]``.

        S      = LIF(X)
        Q,K,V  = LIF(BN(RepConv(S)))                       binary, heads [T, B, h, N, d]
        A      = LIF_0.5( Q (K^T V) * scale )              linear attention, O(N d^2); spike x spike = additions
        out    = BN(RepConv(A))

    ``scale`` is the constant 0.125 of the original, whatever the head dim.
    """

    def __init__(self, dim: int, num_heads: int = 8, scale: float = 0.125, neuron_layer: NeuronFactory = None):
        super().__init__()
        if dim % num_heads != 0:
            raise ValueError(f"dim {dim} must be divisible by num_heads {num_heads}")
        neuron_layer = _default_neuron(neuron_layer)
        self.dim = dim
        self.num_heads = num_heads
        self.scale = scale
        self.input_lif = neuron_layer()
        self.q_conv = MultiStep(RepConv(dim, dim), nn.BatchNorm2d(dim))
        self.k_conv = MultiStep(RepConv(dim, dim), nn.BatchNorm2d(dim))
        self.v_conv = MultiStep(RepConv(dim, dim), nn.BatchNorm2d(dim))
        self.q_lif = neuron_layer()
        self.k_lif = neuron_layer()
        self.v_lif = neuron_layer()
        self.attn_lif = neuron_layer(v_threshold=0.5)
        self.proj_conv = MultiStep(RepConv(dim, dim), nn.BatchNorm2d(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 5:
            raise ValueError(f"SpikeDrivenSelfAttentionV2 expects [T, B, C, H, W], got shape {tuple(x.shape)}")
        T, B, C, H, W = x.shape
        s = self.input_lif(x)
        q = split_heads(self.q_lif(self.q_conv(s)), self.num_heads)
        k = split_heads(self.k_lif(self.k_conv(s)), self.num_heads)
        v = split_heads(self.v_lif(self.v_conv(s)), self.num_heads)
        attn = (q @ (k.transpose(-2, -1) @ v)) * self.scale                 # [T, B, h, N, d]
        attn = self.attn_lif(attn.transpose(3, 4).reshape(T, B, C, H, W))
        return self.proj_conv(attn)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, num_heads={self.num_heads}, scale={self.scale}"


class MetaFormerBlock(nn.Module):
    """Meta-SpikeFormer's Transformer block (``MS_Block``): ``x = x + attn(x); x = x + mlp(x)``, no norms.

    The MLP (``MS_MLP``) is the pre-activation :class:`~snnzoo.layers.mlp.SpikingMlp` with Conv1d projections:
    LIF -> conv1d 1x1 (bias) -> BN1d -> LIF -> conv1d 1x1 (bias) -> BN1d over the N = H*W tokens.
    ``drop_path``: stochastic depth on both branches (the original never applies any).
    """

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, neuron_layer: NeuronFactory = None,
                 drop_path: float = 0.0):
        super().__init__()
        self.attn = SpikeDrivenSelfAttentionV2(dim, num_heads, neuron_layer=neuron_layer)
        self.mlp = SpikingMlp(dim, int(dim * mlp_ratio), preact=True, proj_type='conv1d',
                              neuron_layer=_default_neuron(neuron_layer))
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self.attn(x))
        return x + self.drop_path(self.mlp(x))


class ConvBNDownsample(nn.Module):
    """``[T, B, C_in, H, W]`` -> [LIF] -> conv kxk stride s (with bias) -> BN -> ``[T, B, C_out, H', W']``.

    ``first_layer=True`` (the network's input layer, which sees real-valued pixels) has no neuron.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 2, padding: int = 1,
                 first_layer: bool = False, neuron_layer: NeuronFactory = None):
        super().__init__()
        self.encode_lif = None if first_layer else _default_neuron(neuron_layer)()
        self.encode_conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride, padding=padding)
        self.encode_bn = nn.BatchNorm2d(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.encode_lif is not None:
            x = self.encode_lif(x)
        return per_step(x, self.encode_conv, self.encode_bn)
