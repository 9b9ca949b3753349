"""Spike-driven self-attention (SDSA) of the Spike-driven Transformer v1 (Yao et al., NeurIPS 2023).

Q, K and V are binary spike tensors, so SDSA needs only masks (spike x spike) and additions:

    S      = LIF(X)                                       X [T, B, C, H, W] real-valued, the block's input
    Q,K,V  = LIF(BN(Conv1x1(S)))                          binary, [T, B, C, H, W]
    KV     = LIF_0.5( sum over the N = H*W tokens of K * V )   per channel, [T, B, C, 1, 1], threshold 0.5
    Y      = Q * KV                                       a channel mask applied to every token
    out    = BN(Conv1x1(Y))                               (the block adds the residual X)

No scale factor is applied (the original defines ``scale = 0.125`` but never uses it), and the heads play no part in the
computation except in ``dvs_mode`` (see below), since every step above acts per channel.
"""
from functools import partial
from typing import Callable, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from .neuron import LIFNode
from .temporal import per_step

__all__ = ['SpikeDrivenSelfAttention', 'erode', 'split_heads']


def erode(x: torch.Tensor) -> torch.Tensor:
    """The original's ``Erode``: a 3x3 max-pool (stride 1, padding 1) over the last two dims of a 5-D tensor.

    On spikes ``[T, B, C, H, W]`` this dilates each channel's spike map in image space; on the head-split tensors
    ``[T, B, h, N, d]`` it pools over (token index N, channel within the head d) in flattened token order.
    """
    return F.max_pool3d(x, kernel_size=(1, 3, 3), stride=1, padding=(0, 1, 1))


def split_heads(x: torch.Tensor, num_heads: int) -> torch.Tensor:
    """``[T, B, C, H, W] -> [T, B, h, N, d]`` with N = H W tokens and d = C / h (channel c = head * d + j)."""
    T, B, C = x.shape[:3]
    return x.reshape(T, B, num_heads, C // num_heads, -1).transpose(3, 4)


class SpikeDrivenSelfAttention(nn.Module):
    """SDSA branch: ``[T, B, C, H, W]`` real-valued -> ``[T, B, C, H, W]`` real-valued (before the residual add).

    Args:
        dim: channels C.
        num_heads: heads h (``dim % h == 0``); they only matter in ``dvs_mode``.
        neuron_layer: neuron factory, called as ``neuron_layer()`` and ``neuron_layer(v_threshold=0.5)`` for the KV
            neuron (default: LIF with tau 2, detach_reset, as in the original).
        dvs_mode: the original's CIFAR10-DVS option: the K and V spike maps are dilated by a 3x3 max-pool in image
            space, and ``K * V`` and ``Q * KV`` are max-pooled 3x3 over (token index, channel within head) of their
            ``[T, B, h, N, d]`` layout, exactly as the original (whose released DVS checkpoint depends on it).

    Parameter names follow the original (``q_conv``, ``q_bn``, ...; the KV neuron is the original's
    ``talking_heads_lif``; its never-used ``talking_heads`` conv and ``attn_lif`` are not built).
    """

    def __init__(self, dim: int, num_heads: int = 8, neuron_layer: Optional[Callable[..., nn.Module]] = None,
                 dvs_mode: bool = False):
        super().__init__()
        if dim % num_heads != 0:
            raise ValueError(f"dim {dim} must be divisible by num_heads {num_heads}")
        neuron_layer = neuron_layer or partial(LIFNode, tau=2.0, detach_reset=True)
        self.dim = dim
        self.num_heads = num_heads
        self.dvs_mode = dvs_mode
        self.shortcut_lif = neuron_layer()
        self.q_conv = nn.Conv2d(dim, dim, kernel_size=1, bias=False)
        self.q_bn = nn.BatchNorm2d(dim)
        self.q_lif = neuron_layer()
        self.k_conv = nn.Conv2d(dim, dim, kernel_size=1, bias=False)
        self.k_bn = nn.BatchNorm2d(dim)
        self.k_lif = neuron_layer()
        self.v_conv = nn.Conv2d(dim, dim, kernel_size=1, bias=False)
        self.v_bn = nn.BatchNorm2d(dim)
        self.v_lif = neuron_layer()
        self.kv_lif = neuron_layer(v_threshold=0.5)
        self.proj_conv = nn.Conv2d(dim, dim, kernel_size=1)
        self.proj_bn = nn.BatchNorm2d(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 5:
            raise ValueError(f"SpikeDrivenSelfAttention expects [T, B, C, H, W], got shape {tuple(x.shape)}")
        T, B, C, H, W = x.shape
        s = self.shortcut_lif(x)
        q = self.q_lif(per_step(s, self.q_conv, self.q_bn))
        k = self.k_lif(per_step(s, self.k_conv, self.k_bn))
        v = self.v_lif(per_step(s, self.v_conv, self.v_bn))
        if self.dvs_mode:
            q, k, v = (split_heads(t, self.num_heads) for t in (q, erode(k), erode(v)))
            kv = self.kv_lif(erode(k * v).sum(dim=-2, keepdim=True))          # [T, B, h, 1, d]
            y = erode(q * kv).transpose(3, 4).reshape(T, B, C, H, W)
        else:
            kv = self.kv_lif((k * v).sum(dim=(3, 4), keepdim=True))           # [T, B, C, 1, 1]
            y = q * kv
        return per_step(y, self.proj_conv, self.proj_bn)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, num_heads={self.num_heads}" + (", dvs_mode=True" if self.dvs_mode else "")
