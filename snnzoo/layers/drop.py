"""Stochastic depth for multi-step tensors ``[T, B, ...]``.

timm's ``DropPath`` draws one mask entry per index of dim 0, which is time here; this one draws per sample (dim 1)
and applies the same decision at every time step, so a dropped residual branch is dropped for the whole sample.
"""
import torch
import torch.nn as nn

__all__ = ['DropPath']


class DropPath(nn.Module):
    """In training, ``x * m / (1 - p)`` with m ~ Bernoulli(1 - p) per sample, shared over T; identity in eval.

    Input and output ``[T, B, ...]``.
    """

    def __init__(self, drop_prob: float = 0.0):
        super().__init__()
        if not 0.0 <= drop_prob < 1.0:
            raise ValueError(f"drop_prob must lie in [0, 1), got {drop_prob}")
        self.drop_prob = float(drop_prob)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.drop_prob == 0.0 or not self.training:
            return x
        keep = 1.0 - self.drop_prob
        mask = x.new_empty((1, x.shape[1]) + (1,) * (x.dim() - 2)).bernoulli_(keep)
        return x * mask.div_(keep)

    def extra_repr(self) -> str:
        return f"drop_prob={self.drop_prob}"
