"""Training losses: cross-entropy (plain, label-smoothed, soft-target for Mixup/CutMix) and TET for spiking nets."""
import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy

__all__ = ['TETLoss', 'create_loss']


class TETLoss(nn.Module):
    """Temporal Efficient Training loss (Deng et al., ICLR 2022) on per-step logits ``O`` of shape ``[T, B, C]``.

    ``L = (1 - lamb) * 1/T * sum_t criterion(O[t], y) + lamb * mean((O - means)^2)``

    ``criterion`` is any classification loss of ``([B, C], target)`` (hard labels ``[B]`` or soft ``[B, C]``).
    """

    def __init__(self, criterion: nn.Module, lamb: float = 0.0, means: float = 1.0):
        super().__init__()
        if not 0.0 <= lamb <= 1.0:
            raise ValueError(f"TET lamb must be in [0, 1], got {lamb}")
        self.criterion = criterion
        self.lamb = lamb
        self.means = means

    def forward(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if output.dim() != 3:
            raise ValueError(f"TETLoss expects per-step logits [T, B, C] (call the model with return_per_step=True), "
                             f"got shape {tuple(output.shape)}")
        per_step = sum(self.criterion(o, target) for o in output.unbind(0)) / output.shape[0]
        if self.lamb == 0:
            return per_step
        reg = F.mse_loss(output, torch.full_like(output, self.means))
        return (1 - self.lamb) * per_step + self.lamb * reg


def create_loss(smoothing: float = 0.0, mixup_active: bool = False, tet: bool = False, tet_lamb: float = 0.0,
                tet_means: float = 1.0) -> nn.Module:
    """The training criterion, chosen as timm's train.py does.

    With Mixup/CutMix the targets are soft (label smoothing is folded into them): ``SoftTargetCrossEntropy``;
    otherwise ``LabelSmoothingCrossEntropy(smoothing)`` when ``smoothing > 0``, else ``CrossEntropyLoss``.
    ``tet=True`` wraps it in :class:`TETLoss` (the model must then return per-step logits).
    """
    if mixup_active:
        criterion = SoftTargetCrossEntropy()
    elif smoothing > 0:
        criterion = LabelSmoothingCrossEntropy(smoothing=smoothing)
    else:
        criterion = nn.CrossEntropyLoss()
    return TETLoss(criterion, lamb=tet_lamb, means=tet_means) if tet else criterion
