"""Surrogate gradients of the Heaviside spike function.

The forward pass is always the exact step ``S = Heaviside(x) = (x >= 0)``; the backward pass uses the derivative
``sg(x)`` of a smooth primitive instead of the Dirac delta. ``x = H - V_th``.

| name                  | sg(x)                                             | alpha | SpikingJelly 2.0            |
|-----------------------|---------------------------------------------------|-------|-----------------------------|
| `sigmoid`             | alpha * sigmoid(alpha x) * (1 - sigmoid(alpha x)) | 4     | `Sigmoid(alpha)`            |
| `atan`                | (alpha / 2) / (1 + (pi / 2 * alpha * x)^2)        | 2     | `ATan(alpha)`               |
| `rectangle`           | 1 / alpha if |x| < alpha / 2, else 0 (width alpha) | 1     | `Rect(1 / alpha)`           |
| `piecewise_quadratic` | max(0, alpha - alpha^2 |x|)                        | 1     | `PiecewiseQuadratic(alpha)` |

(alpha: the default.)
"""
import math

import torch

__all__ = ['SURROGATES', 'surrogate_id', 'default_alpha', 'surrogate_grad', 'surrogate_grad_', 'spike_fn']

# name -> (integer id shared with the CUDA kernels, default alpha)
SURROGATES = {
    'sigmoid': (0, 4.0),
    'atan': (1, 2.0),
    'rectangle': (2, 1.0),
    'piecewise_quadratic': (3, 1.0),
}


def _check_name(name: str) -> None:
    if name not in SURROGATES:
        raise ValueError(f"unknown surrogate {name!r}; valid surrogates are {sorted(SURROGATES)}")


def surrogate_id(name: str) -> int:
    _check_name(name)
    return SURROGATES[name][0]


def default_alpha(name: str) -> float:
    _check_name(name)
    return SURROGATES[name][1]


def surrogate_grad_(name: str, x: torch.Tensor, alpha: float) -> torch.Tensor:
    """Overwrite ``x`` with sg(x) of the table above (in place: no allocation); returns ``x``."""
    if name == 'sigmoid':
        x.mul_(alpha).sigmoid_()
        return torch.addcmul(x, x, x, value=-1.0, out=x).mul_(alpha)
    if name == 'atan':
        x.mul_(math.pi / 2 * alpha)
        return x.mul_(x).add_(1.0).reciprocal_().mul_(alpha / 2)
    if name == 'rectangle':
        return torch.lt(x.abs_(), alpha / 2, out=x).mul_(1.0 / alpha)
    if name == 'piecewise_quadratic':
        return x.abs_().mul_(-alpha * alpha).add_(alpha).clamp_min_(0.0)
    _check_name(name)


def surrogate_grad(name: str, x: torch.Tensor, alpha: float) -> torch.Tensor:
    """sg(x) of the table above, as a new tensor."""
    return surrogate_grad_(name, x.clone(), alpha)


class _SpikeFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, name, alpha):
        ctx.save_for_backward(x)
        ctx.name, ctx.alpha = name, alpha
        return (x >= 0).to(x.dtype)

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return grad * surrogate_grad(ctx.name, x, ctx.alpha), None, None


def spike_fn(x: torch.Tensor, surrogate: str = 'sigmoid', alpha: float | None = None) -> torch.Tensor:
    """Stateless spike ``(x >= 0)`` with the named surrogate gradient, for layers that threshold without a neuron."""
    _check_name(surrogate)
    return _SpikeFn.apply(x, surrogate, default_alpha(surrogate) if alpha is None else float(alpha))
