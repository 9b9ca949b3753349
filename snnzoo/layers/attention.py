"""Spiking self-attention (SSA) of Spikformer (Zhou et al., ICLR 2023) and its pre-activation form in Spikingformer.

Input and output ``[T, B, C, H, W]`` or ``[T, B, C, N]`` (the block's residual stream, channels first; N = H*W tokens,
h heads of d = C/h channels, channel c in head c // d). With LIF the multi-step LIF neuron, per head and time step,
Q, K, V in {0, 1}^(N x d):

    Q = LIF(BN(W_q x + b_q)),  K = LIF(BN(W_k x + b_k)),  V = LIF(BN(W_v x + b_v))      (W: 1x1 projections)
    Y = LIF_0.5(s * Q K^T V)                    no softmax; s = ``scale``; threshold 0.5
    out = LIF(BN(W_o Y + b_o))                  post-activation (Spikformer): spikes
    out = BN(W_o Y + b_o), x -> LIF(x) first    pre-activation (Spikingformer): the branch starts with a neuron
                                                and ends with a BatchNorm (a membrane shortcut)

Q K^T V holds exact integer spike counts, so it is evaluated as Q (K^T V) when d < N and as (Q K^T) V otherwise,
with identical values (the originals use either order). Projections and BatchNorms act on ``[T*B, C, N]``
(statistics over T, B and tokens), neurons over T.
"""
from functools import partial
from typing import Callable, Optional

import torch
import torch.nn as nn

from .neuron import LIFNode
from .projection import apply_projection, create_projection

__all__ = ['SpikingSelfAttention', 'check_stream']


def check_stream(x: torch.Tensor, dim: int, name: str) -> None:
    """Raise a ValueError naming ``name`` unless ``x`` is a stream ``[T, B, dim, H, W]`` or ``[T, B, dim, N]``."""
    if x.dim() < 4 or x.shape[2] != dim:
        raise ValueError(f"{name}(dim={dim}) expects [T, B, {dim}, H, W] or [T, B, {dim}, N], "
                         f"got shape {tuple(x.shape)}")


class SpikingSelfAttention(nn.Module):
    """Spiking self-attention: ``[T, B, C, *spatial] -> [T, B, C, *spatial]``.

    Args:
        dim: channels C.
        num_heads: heads h (``dim % h == 0``).
        qkv_bias: bias in the q/k/v projections (Spikformer's CIFAR original: True; its DVS / ImageNet originals and
            Spikingformer: False). The output projection always has a bias.
        scale: s, a constant independent of d (0.125 in the originals; 0.25 in Spikformer's CIFAR10-DVS file).
        attn_v_threshold: threshold of the attention neuron (0.5).
        preact: Spikingformer's pre-activation order (``in_lif`` on the input, no neuron after the output BN).
        proj_type: how the projections are stored, ``'conv1d'`` (most originals) or ``'linear'`` (Spikformer's CIFAR
            file); the same computation (see :mod:`snnzoo.layers.projection`).
        neuron_layer: neuron factory, called as ``neuron_layer()`` and ``neuron_layer(v_threshold=...)``
            (default: LIF with tau 2 and detached reset, as in the originals).

    Submodules: ``in_lif`` (pre-activation only), ``q_proj, q_bn, q_lif``, ``k_*``, ``v_*``, ``attn_lif``,
    ``out_proj, out_bn`` and ``out_lif`` (post-activation only); the BatchNorms are ``BatchNorm1d``.
    """

    def __init__(self, dim: int, num_heads: int = 8, qkv_bias: bool = False, scale: float = 0.125,
                 attn_v_threshold: float = 0.5, preact: bool = False, proj_type: str = 'conv1d',
                 neuron_layer: Optional[Callable[..., nn.Module]] = None):
        super().__init__()
        if num_heads < 1 or dim % num_heads != 0:
            raise ValueError(f"dim ({dim}) must be divisible by num_heads ({num_heads})")
        neuron_layer = neuron_layer or partial(LIFNode, tau=2.0, detach_reset=True)
        self.dim = dim
        self.num_heads = num_heads
        self.scale = float(scale)
        self.preact = bool(preact)
        if self.preact:
            self.in_lif = neuron_layer()
        for name in ('q', 'k', 'v'):
            self.add_module(f'{name}_proj', create_projection(proj_type, dim, dim, bias=qkv_bias))
            self.add_module(f'{name}_bn', nn.BatchNorm1d(dim))
            self.add_module(f'{name}_lif', neuron_layer())
        self.attn_lif = neuron_layer(v_threshold=attn_v_threshold)
        self.out_proj = create_projection(proj_type, dim, dim, bias=True)
        self.out_bn = nn.BatchNorm1d(dim)
        if not self.preact:
            self.out_lif = neuron_layer()

    def _spikes(self, x: torch.Tensor, name: str, T: int, B: int) -> torch.Tensor:
        """``LIF(BN(W x + b))`` for x ``[T*B, C, N]``; returns spikes ``[T, B, C, N]``."""
        y = getattr(self, f'{name}_bn')(apply_projection(getattr(self, f'{name}_proj'), x))
        return getattr(self, f'{name}_lif')(y.unflatten(0, (T, B)))

    def attention(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """``s * Q K^T V`` per head from channel-first spikes ``[T, B, C, N]``; returns ``[T, B, C, N]``."""
        T, B, C, N = q.shape
        h = self.num_heads
        d = C // h
        # channel-first views [T, B, h, d, N] hold Q^T, K^T, V^T; (Q K^T V)^T = V^T K Q^T
        qt, kt, vt = (t.reshape(T, B, h, d, N) for t in (q, k, v))
        if d < N:
            y = (vt @ kt.transpose(-2, -1)) @ qt
        else:
            y = vt @ (kt.transpose(-2, -1) @ qt)
        return (y * self.scale).reshape(T, B, C, N)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_stream(x, self.dim, type(self).__name__)
        shape = x.shape
        T, B, C = shape[:3]
        if self.preact:
            x = self.in_lif(x)
        tokens = x.reshape(T * B, C, -1)
        q = self._spikes(tokens, 'q', T, B)
        k = self._spikes(tokens, 'k', T, B)
        v = self._spikes(tokens, 'v', T, B)
        y = self.attn_lif(self.attention(q, k, v))
        y = self.out_bn(apply_projection(self.out_proj, y.flatten(0, 1))).unflatten(0, (T, B))
        if not self.preact:
            y = self.out_lif(y)
        return y.reshape(shape)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, num_heads={self.num_heads}, scale={self.scale}, preact={self.preact}"
