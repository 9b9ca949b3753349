"""The neurons of converted networks. They run on ``[T*B, ...]`` tensors (every other layer of a converted network is
the ANN's own, applied to all time steps at once) and view them as ``[T, B, ...]`` inside."""
import torch
import torch.nn as nn

from ..layers.neuron import IFNode

__all__ = ['ConvertedNeuron', 'ThresholdIF', 'SignedIF', 'BurstIF', 'SpikeScale', 'RepeatSteps']


def _broadcast(theta: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """A per-channel ``theta [C]`` shaped to broadcast over ``x [N, C, ...]``; a scalar stays a scalar."""
    return theta.reshape(theta.shape + (1,) * (x.dim() - 2)) if theta.dim() else theta


class ConvertedNeuron(nn.Module):
    """The base of the converted neurons: threshold ``theta`` (a scalar, or one per channel of dim 1), initial
    membrane ``v_init * theta``, ``T`` steps."""

    def __init__(self, theta: torch.Tensor, T: int, v_init: float):
        super().__init__()
        theta = torch.as_tensor(theta).detach().clone()
        if not bool(torch.isfinite(theta).all()) or not bool((theta > 0).all()):
            raise ValueError(f"{type(self).__name__}: thresholds must be positive and finite, got min "
                             f"{theta.min().item():.4g}, max {theta.max().item():.4g} (a layer that never activates "
                             f"on the calibration data has no scale: use more calibration images)")
        self.register_buffer('theta', theta)
        self.T, self.v_init = int(T), float(v_init)

    def _steps(self, x: torch.Tensor) -> torch.Tensor:
        """``[T*B, ...]`` currents -> ``[T, B, ...]`` in units of the threshold."""
        if x.shape[0] % self.T:
            raise ValueError(f"{type(self).__name__} expects [T*B, ...] with T={self.T}, got shape {tuple(x.shape)}")
        return (x / _broadcast(self.theta, x)).unflatten(0, (self.T, -1))

    def extra_repr(self) -> str:
        shape = 'per-layer' if self.theta.dim() == 0 else f'per-channel ({self.theta.numel()})'
        return f"T={self.T}, threshold={shape}, v_init={self.v_init}"


class ThresholdIF(ConvertedNeuron):
    """IF neuron with threshold theta, soft reset and V[0] = v_init * theta, over ``[T*B, ...]`` -> spikes {0, 1}.

    H[t] = V[t-1] + X[t];  S[t] = Heaviside(H[t] - theta);  V[t] = H[t] - theta S[t]. Computed as
    :class:`snnzoo.layers.IFNode` (threshold 1, soft reset) on X / theta with v_init added at the first step.
    A constant input x in [0, theta] then fires clip(floor(x T / theta + v_init), 0, T) times in T steps.
    """

    def __init__(self, theta: torch.Tensor, T: int, v_init: float = 0.5, backend: str = 'auto'):
        super().__init__(theta, T, v_init)
        self.node = IFNode(v_threshold=1.0, v_reset=None, backend=backend)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self._steps(x)
        if self.v_init:
            x = torch.cat([x[:1] + self.v_init, x[1:]])
        return self.node(x).flatten(0, 1)


class SignedIF(ConvertedNeuron):
    """Signed IF neuron: a :class:`ThresholdIF` that may also fire -1 to take back one of its earlier spikes, over
    ``[T*B, ...]`` -> spikes {-1, 0, 1}.

    H[t] = V[t-1] + X[t];  S[t] = 1 if H[t] >= theta, -1 if H[t] < 0 and N[t-1] > 0, else 0;  V[t] = H[t] - theta S[t];
    N[t] = N[t-1] + S[t], V[0] = v_init * theta. With v_init = 1/2 and |X[t]| <= theta the count tracks the rounded
    integral of its input at every step, N[t] = max(0, floor(sum_{u<=t} X[u] / theta + 1/2)), so the early
    overshoot a ThresholdIF cannot undo (the "unevenness error" of converted networks: an input that is high at
    first and low later) is corrected a step later.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self._steps(x)
        v = torch.full_like(x[0], self.v_init)
        n = torch.zeros_like(x[0])
        out = torch.empty_like(x)
        for t in range(x.shape[0]):
            v = v + x[t]
            s = (v >= 1).to(x.dtype) - ((v < 0) & (n > 0)).to(x.dtype)
            v, n, out[t] = v - s, n + s, s
        return out.flatten(0, 1)


class BurstIF(ConvertedNeuron):
    """Accumulate-then-fire IF neuron: integrates all T input steps, then fires its count in a burst.

    n = clip(floor(sum_t X[t] / theta + v_init), 0, T);  S[t] = 1 for t < n, else 0  (``[T*B, ...]`` -> ``[T*B, ...]``).
    This is an IF neuron (threshold theta, soft reset, V[0] = v_init * theta) that fires only after its input window:
    each layer then sees its input's whole count, so with T = L and v_init = 1/2 the count n equals a QCFS
    activation's level floor(z L / lambda + 1/2) clipped to [0, L] exactly, however the input spikes are ordered.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self._steps(x)
        n = torch.floor(x.sum(0) + self.v_init).clamp_(0, self.T)
        t = torch.arange(self.T, device=x.device, dtype=x.dtype).reshape((self.T,) + (1,) * n.dim())
        return (t < n).to(x.dtype).flatten(0, 1)


class SpikeScale(nn.Module):
    """x * theta: spikes back to the value they stand for (theta a scalar or per channel of dim 1). Where a spike
    reaches a convolution or linear layer, :func:`snnzoo.conversion.convert` folds theta into its weights instead."""

    def __init__(self, theta: torch.Tensor):
        super().__init__()
        self.register_buffer('theta', torch.as_tensor(theta).detach().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * _broadcast(self.theta, x)


class RepeatSteps(nn.Module):
    """``[B, ...]`` -> ``[T*B, ...]``: a time-invariant value (the layers before the first neurons, computed once on
    the static input) repeated for every step."""

    def __init__(self, T: int):
        super().__init__()
        self.T = int(T)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.unsqueeze(0).expand(self.T, *x.shape).flatten(0, 1)

    def extra_repr(self) -> str:
        return f"T={self.T}"
