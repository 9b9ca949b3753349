"""ANN-to-SNN conversion: trace an ANN with ``torch.fx``, fold BatchNorm, replace every ReLU / QCFS by an IF neuron
with a balanced threshold, and run the result over T time steps."""
import copy
import operator
from typing import Dict, List, Optional

import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F

from ..layers.qcfs import QCFS
from ..layers.temporal import check_finite
from .calibration import Batches, activation_scales, calibration_batches
from .neurons import BurstIF, RepeatSteps, SignedIF, SpikeScale, ThresholdIF

__all__ = ['convert', 'ConvertedSNN', 'METHODS']

METHODS = ('max', 'percentile', 'qcfs', 'exact')

_WEIGHTED = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)
_BATCHNORM = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
_POOL = (nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d, nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d)
_PASS_MODULES = _POOL + (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.Identity, nn.Flatten)
_MAXPOOL = (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d,
            nn.AdaptiveMaxPool3d)
_RELU_FUNCTIONS = (F.relu, torch.relu)
_ADD = (operator.add, operator.iadd, torch.add)
_PASS_FUNCTIONS = (torch.flatten, F.dropout, F.avg_pool1d, F.avg_pool2d, F.avg_pool3d, F.adaptive_avg_pool1d,
                   F.adaptive_avg_pool2d, F.adaptive_avg_pool3d)
_MAXPOOL_FUNCTIONS = (F.max_pool1d, F.max_pool2d, F.max_pool3d, F.adaptive_max_pool1d, F.adaptive_max_pool2d)
_FLATTEN_METHODS = ('flatten', 'view', 'reshape')
_NEURONS = (ThresholdIF, SignedIF, BurstIF)
_SUPPORTED = ("convolutions, linear layers, BatchNorm after them, ReLU or QCFS, average pooling, flatten / view, "
              "dropout, identity and residual additions")


class ConvertedSNN(nn.Module):
    """A converted ANN run as a spiking network of IF neurons for ``T`` steps; stateless like every snnzoo model.

    ``forward(x)``: the ANN's input ``[B, ...]`` (a static image: the layers before the first neurons run once on it,
    their output is repeated for the T steps) -> the output averaged over the T steps ``[B, ...]``;
    ``return_per_step=True`` gives each step's output ``[T, B, ...]``. ``forward_running(x)`` gives the running mean
    ``[T, B, ...]``: entry t is what the network outputs when run for t + 1 steps (the IF network is causal), so one
    pass gives accuracy versus T. ``body`` is the ANN's traced graph over ``[T*B, ...]``,
    its activations replaced by neurons (:class:`~snnzoo.conversion.neurons.ThresholdIF`, ``signed=True``
    :class:`~snnzoo.conversion.neurons.SignedIF`, exact mode :class:`~snnzoo.conversion.neurons.BurstIF`).
    """

    def __init__(self, body: fx.GraphModule, T: int, method: str):
        super().__init__()
        self.body, self.method = body, method
        self._T = int(T)

    @property
    def T(self) -> int:
        return self._T

    def set_T(self, T: int) -> None:
        """Run for ``T`` steps from now on (the thresholds stay as converted)."""
        _check_T(T)
        self._T = int(T)
        for m in self.body.modules():
            if isinstance(m, _NEURONS + (RepeatSteps,)):
                m.T = int(T)

    def neurons(self) -> List[nn.Module]:
        return [m for m in self.body.modules() if isinstance(m, _NEURONS)]

    def forward(self, x: torch.Tensor, return_per_step: bool = False) -> torch.Tensor:
        if not isinstance(x, torch.Tensor) or not x.is_floating_point():
            raise TypeError(f"ConvertedSNN expects a floating-point tensor [B, ...] (the ANN's input), "
                            f"got {type(x).__name__}{'' if not isinstance(x, torch.Tensor) else ' ' + str(x.dtype)}")
        check_finite(x, 'ConvertedSNN input')  # NonFiniteInputError on the CPU; skipped while exporting
        out = self.body(x).unflatten(0, (self.T, x.shape[0]))
        return out if return_per_step else out.mean(0)

    def forward_running(self, x: torch.Tensor) -> torch.Tensor:
        """Running mean of the per-step outputs ``[T, B, ...]``: entry t is the output of a (t + 1)-step run."""
        out = self.forward(x, return_per_step=True)
        steps = torch.arange(1, self.T + 1, device=out.device, dtype=out.dtype)
        return out.cumsum(0) / steps.reshape((-1,) + (1,) * (out.dim() - 1))

    def extra_repr(self) -> str:
        return f"T={self.T}, method={self.method!r}, neurons={len(self.neurons())}"


class _Tracer(fx.Tracer):
    """``torch.fx``'s tracer keeping :class:`snnzoo.layers.QCFS` as one node."""

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return isinstance(m, QCFS) or super().is_leaf_module(m, qualname)


def _check_T(T) -> None:
    if isinstance(T, bool) or int(T) != T or T < 1:
        raise ValueError(f"T (time steps) must be an integer >= 1, got {T!r}")


def _modules(gm: fx.GraphModule) -> Dict[str, nn.Module]:
    return dict(gm.named_modules())


def _describe(node: fx.Node, mods: Dict[str, nn.Module]) -> str:
    if node.op == 'call_module':
        return f"module {node.target!r} ({type(mods[node.target]).__name__})"
    name = getattr(node.target, '__name__', str(node.target))
    return f"{'method' if node.op == 'call_method' else 'function'} {name!r} (graph node {node.name!r})"


def _is_activation(node: fx.Node, mods: Dict[str, nn.Module]) -> bool:
    if node.op == 'call_module':
        return isinstance(mods[node.target], (nn.ReLU, QCFS))
    if node.op == 'call_function':
        return node.target in _RELU_FUNCTIONS
    return node.op == 'call_method' and node.target in ('relu', 'relu_')


def _check_supported(gm: fx.GraphModule) -> None:
    """Raise on the first operation an IF network cannot reproduce."""
    mods = _modules(gm)
    for node in gm.graph.nodes:
        if node.op in ('placeholder', 'output', 'get_attr') or _is_activation(node, mods):
            continue
        if node.op == 'call_module':
            m = mods[node.target]
            if isinstance(m, _MAXPOOL):
                raise NotImplementedError(
                    f"{_describe(node, mods)}: max pooling has no integrate-and-fire equivalent; replace it by "
                    f"average pooling (e.g. nn.AvgPool2d with the same kernel, stride and padding) and fine-tune "
                    f"the ANN before converting")
            if isinstance(m, _WEIGHTED + _BATCHNORM + _PASS_MODULES):
                continue
        elif node.op == 'call_function':
            if node.target in _MAXPOOL_FUNCTIONS:
                raise NotImplementedError(f"{_describe(node, mods)}: max pooling has no integrate-and-fire "
                                          f"equivalent; use average pooling and fine-tune the ANN")
            if node.target in _ADD + _PASS_FUNCTIONS:
                continue
        elif node.op == 'call_method' and node.target in _FLATTEN_METHODS + ('size', 'add', 'add_'):
            continue
        raise NotImplementedError(f"{_describe(node, mods)} cannot be converted to IF neurons; convert supports "
                                  f"{_SUPPORTED}")


def _fold_batchnorm(gm: fx.GraphModule) -> None:
    """Fold every BatchNorm into the convolution / linear layer that feeds it (eval statistics)."""
    mods = _modules(gm)
    uses: Dict[str, int] = {}
    for node in gm.graph.nodes:
        if node.op == 'call_module':
            uses[node.target] = uses.get(node.target, 0) + 1
    for node in list(gm.graph.nodes):
        if node.op != 'call_module' or not isinstance(mods[node.target], _BATCHNORM):
            continue
        bn, src = mods[node.target], node.args[0]
        if not (isinstance(src, fx.Node) and src.op == 'call_module' and isinstance(mods[src.target], _WEIGHTED)
                and len(src.users) == 1 and uses[src.target] == 1):
            raise NotImplementedError(f"BatchNorm {node.target!r} does not directly follow a convolution or linear "
                                      f"layer used only there, so it cannot be folded into its weights")
        if bn.running_mean is None:
            raise ValueError(f"BatchNorm {node.target!r} keeps no running statistics (track_running_stats=False): "
                             f"its eval-mode output depends on the batch and cannot be folded")
        layer = mods[src.target]
        with torch.no_grad():
            scale = bn.weight / torch.sqrt(bn.running_var + bn.eps) if bn.affine else \
                torch.rsqrt(bn.running_var + bn.eps)
            shift = bn.bias if bn.affine else torch.zeros_like(scale)
            bias = layer.bias if layer.bias is not None else torch.zeros_like(scale)
            layer.weight.mul_(scale.reshape((-1,) + (1,) * (layer.weight.dim() - 1)))
            layer.bias = nn.Parameter((bias - bn.running_mean) * scale + shift)
        node.replace_all_uses_with(src)
        gm.graph.erase_node(node)


def _fold_scale(gm: fx.GraphModule, scale_node: fx.Node, neuron: fx.Node, theta: torch.Tensor) -> None:
    """Move the spike amplitude ``theta`` of ``scale_node`` into the weights of every conv / linear layer its spikes
    reach through pooling, dropout, identity or flatten alone; other users (and layers called at several places)
    keep the explicit scale."""
    mods = _modules(gm)
    calls = [n.target for n in gm.graph.nodes if n.op == 'call_module']
    for user in list(scale_node.users):
        if user.op == 'call_method' and user.target == 'size':
            user.replace_input_with(scale_node, neuron)
            continue
        chain, node, flattened = [], user, False
        while True:
            passthrough = ((node.op == 'call_module' and isinstance(mods[node.target], _PASS_MODULES))
                           or (node.op == 'call_function' and node.target in _PASS_FUNCTIONS)
                           or (node.op == 'call_method' and node.target in _FLATTEN_METHODS))
            if not passthrough or len(node.users) != 1:
                break
            flattened |= ((node.op == 'call_module' and isinstance(mods[node.target], nn.Flatten))
                          or (node.op == 'call_function' and node.target is torch.flatten)
                          or node.op == 'call_method')
            chain.append(node)
            node = next(iter(node.users))
        layer = mods.get(node.target) if node.op == 'call_module' else None
        prev = chain[-1] if chain else scale_node
        if (not isinstance(layer, _WEIGHTED) or node.args[0] is not prev or getattr(layer, 'groups', 1) != 1
                or calls.count(node.target) != 1):
            continue
        w = layer.weight
        if theta.dim() == 0:
            factor = theta
        elif isinstance(layer, nn.Linear):
            if w.shape[1] % theta.numel():
                continue
            factor = theta.repeat_interleave(w.shape[1] // theta.numel()).reshape(1, -1)
        elif not flattened and w.shape[1] == theta.numel():
            factor = theta.reshape((1, -1) + (1,) * (w.dim() - 2))
        else:
            continue
        with torch.no_grad():
            w.mul_(factor.to(w))
        user.replace_input_with(scale_node, neuron)
    if not scale_node.users:
        gm.graph.erase_node(scale_node)


def _repeat_time_invariant(gm: fx.GraphModule, T: int) -> None:
    """Run what depends on the input alone (the stem before the first neurons) once on ``[B, ...]`` and repeat its
    value for the T steps where it meets the time-varying part (a neuron, an addition, the output)."""
    mods, static = _modules(gm), set()
    for node in gm.graph.nodes:
        if node.op in ('placeholder', 'get_attr') or (
                node.op != 'output' and not isinstance(mods.get(node.target) if node.op == 'call_module' else None,
                                                       _NEURONS)
                and all(a in static for a in node.all_input_nodes)):
            static.add(node)
    for i, node in enumerate([n for n in gm.graph.nodes if n in static and n.op != 'get_attr']):
        users = [u for u in node.users if u not in static]
        if not users:
            continue
        gm.add_submodule(f"repeat{i}", RepeatSteps(T))
        with gm.graph.inserting_after(node):
            rep = gm.graph.call_module(f"repeat{i}", (node,))
        for u in users:
            u.replace_input_with(node, rep)


@torch.no_grad()
def convert(ann: nn.Module, calibration_data: Optional[Batches] = None, T: int = 32, method: str = 'max',
            percentile: float = 99.9, channelwise: bool = False, v_init: float = 0.5, signed: bool = False,
            backend: str = 'auto') -> ConvertedSNN:
    """Convert ``ann`` into a multi-step spiking network of IF neurons (soft reset, BatchNorm folded).

    Every ReLU / QCFS output a_l becomes spikes s_l in {0, 1} of an IF neuron with threshold theta_l; a spike stands
    for the value theta_l, which is folded into the weights of the layers it feeds (W' = W theta_l, per input
    channel), so the firing rate of a neuron times theta_l approximates a_l (error < theta_l / T per layer for a
    constant input), and the network's output averaged over T approximates the ANN's.

    Args:
        ann: an ANN in eval mode, traceable by ``torch.fx``, built of convolutions, linear layers, BatchNorm (after
            a conv / linear), ReLU or :class:`snnzoo.layers.QCFS`, average pooling, flatten, dropout, identity and
            residual additions (torchvision / timm ResNets and VGGs with average pooling, snnzoo's QCFS ResNets).
        calibration_data: training inputs for threshold balancing: a tensor ``[N, ...]`` or an iterable of tensors
            or ``(x, y)`` batches (a DataLoader); not needed by ``'qcfs'`` / ``'exact'``.
        T: time steps (changeable later with :meth:`ConvertedSNN.set_T`).
        method: ``'max'`` (theta = the largest activation on the calibration data), ``'percentile'`` (its
            ``percentile``-th percentile, robust normalisation), ``'qcfs'`` (theta = each QCFS's lambda; needs a
            QCFS ANN) or ``'exact'`` (QCFS thresholds with accumulate-then-fire neurons: at T = L every neuron's
            spike count equals its QCFS activation level exactly).
        percentile: the percentile for ``'percentile'`` (0-100).
        channelwise: one threshold per channel instead of one per layer (``'max'`` / ``'percentile'``).
        v_init: initial membrane potential as a fraction of the threshold (1/2 makes the rate a rounding instead of a
            floor; QCFS theory; ``'qcfs'`` / ``'exact'`` always use 1/2).
        signed: signed IF neurons (:class:`~snnzoo.conversion.neurons.SignedIF`, spikes in {-1, 0, 1}): a neuron
            takes back an earlier spike when its membrane falls below 0, so its count follows the rounded integral
            of its input instead of overshooting it (fewer steps for the same accuracy; not with ``'exact'``; a -1
            spike is not binary, so the strict energy convention counts the layers it feeds as MACs).
        backend: the IF neurons' backend (``'auto'``, ``'torch'``, ``'cupy'``).

    Returns:
        :class:`ConvertedSNN` taking the ANN's input.
    """
    if method not in METHODS:
        raise ValueError(f"unknown conversion method {method!r}; use one of {', '.join(METHODS)}")
    _check_T(T)
    if not isinstance(ann, nn.Module):
        raise TypeError(f"convert expects an nn.Module, got {type(ann).__name__}")
    if ann.training:
        raise ValueError("convert needs the ANN in eval mode (BatchNorm running statistics, no dropout): call "
                         "ann.eval() first")
    if signed and method == 'exact':
        raise ValueError("signed=True does not apply to method 'exact' (its accumulate-then-fire neurons already "
                         "fire their exact count); use signed with 'max', 'percentile' or 'qcfs'")
    if method == 'percentile' and not 0 < percentile <= 100:
        raise ValueError(f"percentile must lie in (0, 100], got {percentile}")
    try:
        root = copy.deepcopy(ann)
        gm = fx.GraphModule(root, _Tracer().trace(root), type(ann).__name__)
    except Exception as e:  # data-dependent control flow, unsupported Python: say what convert needs
        raise NotImplementedError(f"convert traces the ANN with torch.fx and tracing {type(ann).__name__} failed "
                                  f"({type(e).__name__}: {e}); it needs a forward without data-dependent control "
                                  f"flow, built of {_SUPPORTED}") from e
    _check_supported(gm)
    _fold_batchnorm(gm)
    gm.recompile()
    mods = _modules(gm)
    sites = [n for n in gm.graph.nodes if _is_activation(n, mods)]
    if not sites:
        raise ValueError(f"{type(ann).__name__} has no ReLU or QCFS activation: there is nothing to make spike")
    if method in ('qcfs', 'exact'):
        for n in sites:
            if not (n.op == 'call_module' and isinstance(mods[n.target], QCFS)):
                raise ValueError(f"method {method!r} needs an ANN trained with QCFS activations "
                                 f"(snnzoo.layers.QCFS), but {_describe(n, mods)} is a ReLU; use method='max' or "
                                 f"'percentile' (threshold balancing with calibration data)")
        thetas = {n.name: mods[n.target].lam.detach().clone() for n in sites}
        v_init = 0.5
    else:
        batches = calibration_batches(calibration_data)
        dtype = next((p.dtype for p in gm.parameters()), batches[0].dtype)
        device = next((p.device for p in gm.parameters()), batches[0].device)
        batches = [b.to(device=device, dtype=dtype) for b in batches]
        thetas = activation_scales(gm, sites, batches, 100.0 if method == 'max' else percentile, channelwise)
    for i, n in enumerate(sites):
        theta, name = thetas[n.name], f"neuron{i}"
        if method == 'exact':
            neuron = BurstIF(theta, T, v_init)
        elif signed:
            neuron = SignedIF(theta, T, v_init)
        else:
            neuron = ThresholdIF(theta, T, v_init, backend)
        gm.add_submodule(name, neuron)
        gm.add_submodule(f"scale{i}", SpikeScale(theta))
        with gm.graph.inserting_after(n):
            new = gm.graph.call_module(name, (n.args[0],))
        with gm.graph.inserting_after(new):
            scale = gm.graph.call_module(f"scale{i}", (new,))
        n.replace_all_uses_with(scale)
        gm.graph.erase_node(n)
        _fold_scale(gm, scale, new, theta)
    _repeat_time_invariant(gm, T)
    gm.graph.lint()
    gm.delete_all_unused_submodules()
    gm.recompile()
    return ConvertedSNN(gm, T, method)
