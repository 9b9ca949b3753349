"""The quantization-clip-floor-shift activation (QCFS; Bu et al., "Optimal ANN-SNN Conversion for High-accuracy and
Ultra-low-latency Spiking Neural Networks", ICLR 2022), the ANN activation an integrate-and-fire neuron reproduces."""
import torch
import torch.nn as nn

__all__ = ['QCFS']


class QCFS(nn.Module):
    """y = lambda / L * clip(floor(x L / lambda + 1/2), 0, L), with a learnable clip value lambda (one per layer).

    The output takes the L + 1 levels {0, lambda/L, ..., lambda}: the firing rate of an IF neuron with threshold
    lambda, soft reset and initial membrane lambda/2 after L steps of a constant input x. Gradients (as the paper's):
    floor passes the gradient straight through, so dy/dx = 1 on 0 < x < lambda and 0 outside; dy/dlambda = 1 above
    lambda and y/lambda - x/lambda inside. Any tensor layout.

    Args:
        L: quantization levels (the number of time steps of the exactly equivalent SNN).
        init_lambda: initial clip value lambda (the paper's 8.0).
    """

    def __init__(self, L: int = 8, init_lambda: float = 8.0):
        super().__init__()
        if int(L) != L or L < 1:
            raise ValueError(f"QCFS needs an integer number of levels L >= 1, got {L}")
        if not init_lambda > 0:
            raise ValueError(f"QCFS needs a positive clip value init_lambda, got {init_lambda}")
        self.L = int(L)
        self.lam = nn.Parameter(torch.tensor(float(init_lambda)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = (x / self.lam).clamp(0.0, 1.0) * self.L + 0.5
        z = z + (z.floor() - z).detach()  # floor, straight-through gradient
        return z * (self.lam / self.L)

    def extra_repr(self) -> str:
        return f"L={self.L}" + ("" if self.lam.is_meta else f", lambda={self.lam.item():.4f}")
