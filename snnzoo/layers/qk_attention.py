"""Q-K attention (QKFormer, Zhou et al. 2024): a spike-form attention with no V and no softmax, linear in tokens.

Input and output ``[T, B, C, H, W]`` or ``[T, B, C, N]`` (a stage's residual stream; N = H*W tokens, h heads of
d = C/h channels, channel c in head c // d). With LIF = multi-step LIF (tau 2, hard reset, detached reset, sigmoid
surrogate):

    Q = LIF(BN(W_q x)),  K = LIF(BN(W_k x))                   binary spikes [T, B, C, N]  (W: 1x1 convs, no bias)
    token attention   (QKTA): A = LIF_0.5(sum of Q over the d channels of each head)   [T, B, h, 1, N]
    channel attention (QKCA): A = LIF_0.5(sum of Q over the N tokens of each channel)  [T, B, C, 1]
    X' = A * K  (the binary mask A broadcast over K),   out = LIF(BN(W_o X' + b_o))

``LIF_0.5`` has threshold 0.5. QKTA is the attention of the released QKFormer models; QKCA is the paper's channel
variant. Convolutions and BatchNorms act on ``[T*B, C, N]`` (statistics over T, B and tokens); neurons run over T.
"""
from functools import partial
from typing import Callable, Optional

import torch
import torch.nn as nn

from .attention import check_stream
from .neuron import LIFNode

__all__ = ['TokenQKAttention', 'ChannelQKAttention']


class _QKAttention(nn.Module):
    """Shared Q, K and projection branches of QKTA / QKCA; subclasses define the mask ``A``.

    ``neuron_layer`` is the neuron factory, called as ``neuron_layer()`` and ``neuron_layer(v_threshold=0.5)``
    (default: LIF with tau 2 and detached reset, as in the original). Submodules ``q_proj, q_bn, q_lif``, ``k_*``,
    ``attn_lif``, ``out_proj, out_bn, out_lif``; the projections are ``Conv1d(C, C, 1)``, only ``out_proj`` has a bias.
    """

    def __init__(self, dim: int, neuron_layer: Optional[Callable[..., nn.Module]] = None):
        super().__init__()
        neuron_layer = neuron_layer or partial(LIFNode, tau=2.0, detach_reset=True)
        self.dim = dim
        self.q_proj = nn.Conv1d(dim, dim, kernel_size=1, bias=False)
        self.q_bn = nn.BatchNorm1d(dim)
        self.q_lif = neuron_layer()
        self.k_proj = nn.Conv1d(dim, dim, kernel_size=1, bias=False)
        self.k_bn = nn.BatchNorm1d(dim)
        self.k_lif = neuron_layer()
        self.attn_lif = neuron_layer(v_threshold=0.5)
        self.out_proj = nn.Conv1d(dim, dim, kernel_size=1)
        self.out_bn = nn.BatchNorm1d(dim)
        self.out_lif = neuron_layer()

    def masked_keys(self, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        """``A * K`` from the spikes ``q`` and ``k``, both ``[T, B, C, N]``."""
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_stream(x, self.dim, type(self).__name__)
        shape = x.shape
        T, B, C = shape[:3]
        tokens = x.reshape(T * B, C, -1)                                              # [T*B, C, N]
        q = self.q_lif(self.q_bn(self.q_proj(tokens)).unflatten(0, (T, B)))
        k = self.k_lif(self.k_bn(self.k_proj(tokens)).unflatten(0, (T, B)))
        y = self.masked_keys(q, k)                                                    # [T, B, C, N]
        y = self.out_bn(self.out_proj(y.flatten(0, 1))).unflatten(0, (T, B))
        return self.out_lif(y).reshape(shape)

    def extra_repr(self) -> str:
        return f"dim={self.dim}"


class TokenQKAttention(_QKAttention):
    """QKTA: a binary mask over tokens, per head, from the per-token spike count of Q in that head.

    ``A[t, b, i, 0, n] = LIF_0.5(sum_{c in head i} Q[t, b, c, n])``; ``out = LIF(BN(W_o (A * K) + b_o))``.
    Input and output ``[T, B, C, H, W]`` or ``[T, B, C, N]``; ``dim`` must be divisible by ``num_heads``.
    """

    def __init__(self, dim: int, num_heads: int = 8, neuron_layer: Optional[Callable[..., nn.Module]] = None):
        if num_heads < 1 or dim % num_heads:
            raise ValueError(f"TokenQKAttention: dim {dim} must be divisible by num_heads {num_heads}")
        super().__init__(dim, neuron_layer)
        self.num_heads = num_heads

    def masked_keys(self, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        heads = (self.num_heads, self.dim // self.num_heads)
        attn = self.attn_lif(q.unflatten(2, heads).sum(3, keepdim=True))             # [T, B, h, 1, N]
        return (attn * k.unflatten(2, heads)).flatten(2, 3)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, num_heads={self.num_heads}"


class ChannelQKAttention(_QKAttention):
    """QKCA: a binary mask over channels from the per-channel spike count of Q over all tokens.

    ``A[t, b, c, 0] = LIF_0.5(sum_n Q[t, b, c, n])``; ``out = LIF(BN(W_o (A * K) + b_o))``. Heads play no role (a
    channel sum stays within its head). Input and output ``[T, B, C, H, W]`` or ``[T, B, C, N]``.
    """

    def masked_keys(self, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        return self.attn_lif(q.sum(3, keepdim=True)) * k                              # mask [T, B, C, 1]
