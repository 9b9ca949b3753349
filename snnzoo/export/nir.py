"""NIR export and import (the ``nir`` package, 1.0.8): ``to_nir(model, sample)`` and ``from_nir(graph)``.

A NIR graph describes one time step of a network whose neurons are continuous-time ODEs; a reader integrates them
with its step ``dt``. snnzoo's neurons are discrete. With Euler steps of ``dt`` (the graph's ``metadata['dt']``,
default 1e-4 s, the step snnTorch's reader assumes), the NIR neurons reproduce them exactly:

===========================================  =========================================================================
snnzoo                                       NIR node (``v <- v + dt/tau (v_leak - v + r I)``; IF: ``v <- v + dt r I``)
===========================================  =========================================================================
LIF, decay_input, 1/tau = k                  ``LIF(tau = dt / k, r = 1, v_leak = V_reset)``
LIF, no decay_input                          ``LIF(tau = dt / k, r = 1 / k, v_leak = V_reset)``
PLIF (k = sigmoid(w), learnt)                as LIF with the current k
IF                                           ``IF(r = 1 / dt)``
hard reset to V_reset                        ``v_reset = V_reset``
threshold: snnzoo fires on H >= V_th         ``v_threshold`` = the float32 just below V_th (NIR fires on v > v_thr)
===========================================  =========================================================================

Every element of a layer shares the same parameters; the exact snnzoo neuron (class, tau or PLIF's w) is kept in each
node's ``metadata`` so that snnzoo -> NIR -> snnzoo is bit-exact.

Soft reset (subtract V_th: snnzoo neurons with ``v_reset=None``, and the IF neurons of converted networks, which also
start at ``V[0] = v_init theta``) has no NIR node: NIR's LIF and IF reset to ``v_reset``, and snnTorch 1.0.0 reads an
``IF`` as a leaky neuron (beta 0.9). It is written as a recurrent subgraph whose edges are read one step late, the
neuron's state kept by a feedback edge; each node is one that snnTorch's reader (through nirtorch 2.6) runs:

    name.in = g X;  name.h = name.in + name.v[t-1]  (LIF: + name.leak[t-1] = (1 - k) name.v[t-1] instead);
    name = [name.h >= theta]  (memoryless LIF, tau = dt);  name.reset = -r name;  name.v = name.h + name.reset

with ``g = 1`` (IF, LIF without input decay) or ``k`` (LIF with input decay), ``theta = r = V_th``; for a converted
network's neuron, the membrane in units of its threshold: ``g = 1 / theta_l`` (per channel), ``r = 1`` and
``theta = 1 - v_init`` (the membrane minus its initial value starts at 0). ``g X``, ``-r S`` and the identities are
1x1 ``Conv2d`` (``Affine`` for flat features) with diagonal weights: exact products. Every sum has two terms, so its
order does not matter. The spiking node carries the layer's name; from_nir rebuilds the snnzoo neuron from its
metadata. The accumulate-then-fire neurons of conversion method 'exact' fire after their whole input window, which
no graph of one time step can express: refused. A converted network's ``SpikeScale`` (spikes times theta) is such a
diagonal node, and its ``RepeatSteps`` (the static stem repeated over T) nothing: the graph runs every step anyway.

Other layers: Conv2d -> ``Conv2d``, Linear -> ``Affine``, BatchNorm folded into the conv / linear before it,
AvgPool2d and the global spatial mean -> ``AvgPool2d``, flattening -> ``Flatten``, a multiplication by a constant ->
``Scale``, a sum of two activations (SEW's ADD, MS-ResNet's membrane shortcut) -> two edges into the next node
(NIR sums a node's inputs). NIR has no max node: a max-pool of non-negative integers bounded by K (spikes: K = 1,
SEW ADD sums: the number of spike tensors added) is written as ``sum_{j=1..K} [SumPool([x >= j]) >= 1]``, each
``[. >= c]`` a memoryless LIF (``tau = dt``: ``v = r I`` at every step) with threshold c - 1/2; exact for such
inputs. A product of two activations (SEW's AND / IAND, every attention matmul) has no NIR node and is refused with
an error naming the first one.

Layout: the graph's input is one time step of one sample (``[C, H, W]``; a static image is fed at every step); the
output is the per-step output (e.g. per-step logits; a model's logits are their mean over T).
"""
import inspect
from typing import Dict, List, Optional, Sequence, Tuple

import nir
import numpy as np
import torch
import torch.nn as nn

from ..layers import (BaseNode, ChannelQKAttention, IFNode, LIFNode, ParametricLIFNode, SpikeDrivenSelfAttention,
                      SpikingSelfAttention, TokenQKAttention)
from ..layers.temporal import MultiStep
from ..conversion.neurons import ConvertedNeuron, RepeatSteps, SpikeScale, ThresholdIF
from ._trace import DataflowTrace
from .fuse import fold_bn

__all__ = ['DT', 'NIRExportError', 'to_nir', 'from_nir', 'NIRNetwork', 'Heaviside']

DT = 1e-4
_ATTENTION = (SpikingSelfAttention, SpikeDrivenSelfAttention, TokenQKAttention, ChannelQKAttention)
_LEAVES = (nn.Conv2d, nn.Linear, nn.BatchNorm1d, nn.BatchNorm2d, nn.AvgPool2d, nn.MaxPool2d, nn.AdaptiveAvgPool2d,
           nn.Flatten, nn.Dropout, BaseNode, ConvertedNeuron, SpikeScale, RepeatSteps)
_PRODUCTS = frozenset({'mul', 'matmul', 'bmm', 'einsum', 'baddbmm', 'addbmm', 'mm', 'rmul', 'rsub', 'sub', 'div'})
_ATTENTION_HELP = ("NIR 1.0.8 has no node that multiplies two activations (no matmul, no product): spiking "
                   "self-attention (Q K^T and its product with V) cannot be expressed; see the README section "
                   "'Export and deployment' for the NIR nodes it would need. Export such models with to_onnx")


class NIRExportError(ValueError):
    """The network contains an operation that NIR cannot express."""


def _f32_below(x: float) -> float:
    return float(np.nextafter(np.float32(x), np.float32(-np.inf)))


def _f32_above(x: float) -> float:
    return float(np.nextafter(np.float32(x), np.float32(np.inf)))


def _full(shape, value) -> np.ndarray:
    return np.full(tuple(shape), value, dtype=np.float32)


def _neuron_meta(node: BaseNode, dt: float) -> Tuple[dict, float]:
    """The metadata that rebuilds snnzoo neuron ``node`` exactly, and its decay k (IF: 0)."""
    cfg = node.config()
    meta = {'dt': dt, 'snnzoo_node': type(node).__name__, 'snnzoo_v_threshold': cfg.v_threshold,
            'snnzoo_detach_reset': cfg.detach_reset, 'snnzoo_surrogate': cfg.surrogate, 'snnzoo_alpha': cfg.alpha}
    if cfg.charge == 'if':
        return meta, 0.0
    if cfg.charge == 'plif':
        meta['snnzoo_w'] = float(node.w.detach().reshape(()))
        k = float(node.decay().detach().float())
    else:
        meta['snnzoo_tau'] = cfg.tau
        k = 1.0 / cfg.tau
    meta['snnzoo_decay_input'] = cfg.decay_input
    return meta, k


def _neuron_node(node: BaseNode, shape: Tuple[int, ...], dt: float) -> nir.NIRNode:
    """The NIR node of one hard-reset snnzoo neuron layer with per-step input ``shape`` (see the module docstring)."""
    cfg = node.config()
    meta, k = _neuron_meta(node, dt)
    common = dict(v_threshold=_full(shape, _f32_below(cfg.v_threshold)), v_reset=_full(shape, cfg.v_reset))
    if cfg.charge == 'if':
        return nir.IF(r=_full(shape, 1.0 / dt), metadata=meta, **common)
    return nir.LIF(tau=_full(shape, dt / k), r=_full(shape, 1.0 if cfg.decay_input else 1.0 / k),
                   v_leak=_full(shape, cfg.v_reset), metadata=meta, **common)


def _memoryless(shape, threshold: float, dt: float, metadata: Optional[dict] = None) -> nir.LIF:
    """``[I > threshold]`` at every step: a LIF with tau = dt forgets its past (v = r I)."""
    return nir.LIF(tau=_full(shape, dt), r=_full(shape, 1.0), v_leak=_full(shape, 0.0),
                   v_threshold=_full(shape, threshold), v_reset=_full(shape, 0.0),
                   metadata={'dt': dt, **(metadata or {})})


def _diagonal(shape: Tuple[int, ...], gain, metadata: dict) -> nir.NIRNode:
    """``y = gain * x`` per channel (dim 0 of the per-step ``shape``) as a 1x1 ``Conv2d`` / an ``Affine`` with a
    diagonal weight: exact (one non-zero product per output) and run by every reader (snnTorch 1.0.0 maps neither
    ``Scale`` nor grouped convolutions)."""
    gain = np.broadcast_to(np.asarray(gain, np.float32).reshape(-1), (shape[0],))
    weight, bias = np.diag(gain).astype(np.float32), np.zeros(shape[0], np.float32)
    if len(shape) == 1:
        return nir.Affine(weight=weight, bias=bias, metadata=metadata)
    return nir.Conv2d(input_shape=tuple(shape[1:]), weight=weight[:, :, None, None], stride=1, padding=0, dilation=1,
                      groups=1, bias=bias, metadata=metadata)


class _Value:
    """A traced activation: the NIR nodes whose outputs sum to it, and an upper bound when it is a non-negative
    integer count (spikes: 1; None: real-valued)."""

    def __init__(self, sources: Tuple[str, ...], bound: Optional[int], parents: Tuple['_Value', ...] = ()):
        self.sources, self.bound, self.parents = sources, bound, parents
        self.stale = False   # the output of a conv / linear layer whose BatchNorm has been folded into it

    def is_stale(self) -> bool:
        return self.stale or any(p.is_stale() for p in self.parents)


class _GraphBuilder:
    def __init__(self, model: nn.Module, dt: float):
        self.model, self.dt = model, dt
        self.nodes: Dict[str, nir.NIRNode] = {}
        self.edges: List[Tuple[str, str]] = []
        self.folded = set()                      # conv / linear nodes with a BatchNorm folded in
        self.readers: Dict[str, int] = {}
        self.tracer = DataflowTrace(model, _LEAVES, self.on_leaf, self.on_op)

    def unique(self, name: str) -> str:
        base, i = name, 1
        while name in self.nodes:
            i += 1
            name = f'{base}_{i}'
        return name

    def add(self, name: str, node: nir.NIRNode, inputs: Sequence[_Value]) -> str:
        name = self.unique(name)
        self.nodes[name] = node
        for value in inputs:
            if value.is_stale():
                raise NIRExportError(f"the output of {value.sources} is read both before and after its BatchNorm; "
                                     f"only a BatchNorm that is the sole reader of a conv / linear output can be folded")
            for src in value.sources:
                self.readers[src] = self.readers.get(src, 0) + 1
                self.edges.append((src, name))
        return name

    def fail(self, what: str) -> None:
        raise NIRExportError(f"{what} (in {self.tracer.where()}) has no NIR equivalent; it is the first operation of "
                             f"{type(self.model).__name__} that NIR 1.0.8 cannot express")

    # -- leaf modules ----------------------------------------------------------------------------------------------
    def on_leaf(self, name, module, traced, inputs, output):
        if all(t is None for t in traced):
            self.fail(f"{type(module).__name__} on an input that does not come from the network input")
        t = traced[0]
        x, shape = t.payload, t.shape
        if isinstance(module, (nn.Dropout, nn.Identity, RepeatSteps)):   # a graph step repeats the static part
            return x
        if isinstance(module, ThresholdIF):
            theta = module.theta.detach().cpu().double().numpy()
            meta = {'snnzoo_node': 'ThresholdIF', 'snnzoo_theta': theta.astype(np.float32).reshape(-1),
                    'snnzoo_theta_per_channel': theta.ndim > 0, 'snnzoo_v_init': module.v_init}
            return self.soft_reset(name, x, shape, 1.0 / theta, 0.0, 1.0 - module.v_init, 1.0, meta)
        if isinstance(module, SpikeScale):
            node = _diagonal(shape, module.theta.detach().cpu().numpy(), {'snnzoo_node': 'SpikeScale'})
            return _Value((self.add(name, node, [x]),), None)
        if isinstance(module, BaseNode) and module.v_reset is None:
            meta, k = _neuron_meta(module, self.dt)
            gain = k if module.config().charge != 'if' and module.config().decay_input else 1.0
            return self.soft_reset(name, x, shape, gain, k, module.v_threshold, module.v_threshold, meta)
        if isinstance(module, BaseNode):
            return _Value((self.add(name, _neuron_node(module, shape, self.dt), [x]),), 1)
        if isinstance(module, nn.Conv2d):
            if module.padding_mode != 'zeros':
                self.fail(f"Conv2d with padding_mode={module.padding_mode!r}")
            bias = np.zeros(module.out_channels, np.float32) if module.bias is None else _np(module.bias)
            node = nir.Conv2d(input_shape=tuple(shape[-2:]), weight=_np(module.weight), stride=module.stride,
                              padding=module.padding, dilation=module.dilation, groups=module.groups, bias=bias)
            return _Value((self.add(name, node, [x]),), None), tuple(output.shape[-3:])
        if isinstance(module, nn.Linear):
            bias = np.zeros(module.out_features, np.float32) if module.bias is None else _np(module.bias)
            node = nir.Affine(weight=_np(module.weight), bias=bias)
            return _Value((self.add(name, node, [x]),), None), (module.out_features,)
        if isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d)):
            return self.fold(name, module, x)
        if isinstance(module, nn.AvgPool2d):
            if module.ceil_mode or not module.count_include_pad or module.divisor_override:
                self.fail("AvgPool2d with ceil_mode, count_include_pad=False or divisor_override")
            node = nir.AvgPool2d(kernel_size=_pair(module.kernel_size), stride=_pair(module.stride),
                                 padding=_pair(module.padding))
            return _Value((self.add(name, node, [x]),), None), tuple(output.shape[-3:])
        if isinstance(module, nn.AdaptiveAvgPool2d):
            if _pair(module.output_size).tolist() != [1, 1]:
                self.fail(f"AdaptiveAvgPool2d({module.output_size})")
            return self.global_mean(name, x, shape, keepdim=True)
        if isinstance(module, nn.MaxPool2d):
            return self.max_pool(name, module, x, shape, tuple(output.shape[-3:]))
        if isinstance(module, nn.Flatten):
            return self.flatten(name, x, shape, tuple(output.shape[module.start_dim:]) if module.start_dim >= 0
                                else None, output)
        self.fail(type(module).__name__)

    def soft_reset(self, name, x: _Value, shape, gain, k: float, threshold: float, reset: float, meta: dict):
        """A soft-reset neuron as the recurrent subgraph of the module docstring (``g = gain``, ``r = reset``; a
        leak node when ``k``). Nodes are added in the order a reader can run them in, the fed-back one last."""
        name = self.unique(name)   # the spiking node; its helpers are name.in, name.h, name.reset, name.v, name.leak
        group = {'snnzoo_group': name}
        self.add(f'{name}.in', _diagonal(shape, gain, {**group, 'snnzoo_role': 'in'}), [x])
        roles = {'h': _diagonal(shape, 1.0, {}), '': _memoryless(shape, _f32_below(threshold), self.dt, meta),
                 'reset': _diagonal(shape, -reset, {}), 'v': _diagonal(shape, 1.0, {})}
        if k:
            roles['leak'] = _diagonal(shape, 1.0 - k, {})
        for role, node in roles.items():
            node.metadata.update(group, snnzoo_role=role or 'fire')
            self.nodes[f'{name}.{role}' if role else name] = node
        self.edges += [(f'{name}.in', f'{name}.h'), (f'{name}.leak' if k else f'{name}.v', f'{name}.h'),
                       (f'{name}.h', name), (name, f'{name}.reset'), (f'{name}.h', f'{name}.v'),
                       (f'{name}.reset', f'{name}.v')] + ([(f'{name}.v', f'{name}.leak')] if k else [])
        return _Value((name,), 1)

    def fold(self, name: str, bn: nn.Module, x: _Value):
        src = x.sources[0] if len(x.sources) == 1 else None
        node = self.nodes.get(src)
        if not isinstance(node, (nir.Conv2d, nir.Affine)) or self.readers.get(src) or src in self.folded:
            self.fail(f"BatchNorm {name} not directly after a conv / linear layer (NIR has no per-channel affine node)")
        w, b = fold_bn(torch.from_numpy(node.weight), torch.from_numpy(node.bias), bn)
        node.weight, node.bias = w.numpy(), b.numpy()
        self.folded.add(src)
        x.stale = True
        return _Value(x.sources, None)

    def max_pool(self, name, pool: nn.MaxPool2d, x: _Value, shape, out_shape):
        if x.bound is None:
            self.fail(f"MaxPool2d {name} of real values (NIR has no max node; snnzoo expresses a max-pool only of "
                      f"spikes or spike counts)")
        if pool.dilation not in (1, (1, 1)) or pool.ceil_mode:
            self.fail(f"MaxPool2d {name} with dilation or ceil_mode")
        kernel, stride = _pair(pool.kernel_size), _pair(pool.stride or pool.kernel_size)
        outs = []
        for j in range(1, x.bound + 1):   # max = sum_j [window has a value >= j]
            level = x if x.bound == 1 else _Value(
                (self.add(f'{name}.ge{j}', _memoryless(shape, j - 0.5, self.dt), [x]),), 1)
            summed = self.add(f'{name}.sum{j}', nir.SumPool2d(kernel_size=kernel, stride=stride,
                                                             padding=_pair(pool.padding)), [level])
            outs.append(self.add(f'{name}.any{j}', _memoryless(out_shape, 0.5, self.dt),
                                 [_Value((summed,), None)]))
        return _Value(tuple(outs), x.bound), out_shape

    def global_mean(self, name, x: _Value, shape, keepdim: bool):
        if len(shape) != 3:
            self.fail(f"a mean over the spatial dims of a tensor of per-step shape {shape}")
        node = nir.AvgPool2d(kernel_size=np.array(shape[1:]), stride=np.array(shape[1:]), padding=np.array([0, 0]))
        pooled = _Value((self.add(name, node, [x]),), None)
        if keepdim:
            return pooled, (shape[0], 1, 1)
        return self.flatten(f'{name}.flatten', pooled, (shape[0], 1, 1), (shape[0],), None)

    def flatten(self, name, x: _Value, shape, new_shape, output):
        new_shape = tuple(new_shape) if new_shape is not None else None
        for start in range(len(shape)):
            for end in range(start, len(shape)):
                flat = shape[:start] + (int(np.prod(shape[start:end + 1])),) + shape[end + 1:]
                if new_shape is None or flat == new_shape:
                    node = nir.Flatten(input_type={'input': np.array(shape)}, start_dim=start,
                                       end_dim=end if end < len(shape) - 1 else -1)
                    return _Value((self.add(name, node, [x]),), x.bound), flat
        self.fail(f"reshaping a per-step tensor of shape {shape} to {new_shape}")

    # -- functional operations -------------------------------------------------------------------------------------
    def on_op(self, name, func, traced, args, kwargs, result):
        if not (torch.is_tensor(result) and result.is_floating_point()):
            return None   # checks (isfinite, any, comparisons): a later use of their result fails as untraced
        live = [t for t in traced if t is not None]
        if name in ('matmul', 'bmm', 'einsum', 'baddbmm', 'mm') and len(live) >= 1:
            raise NIRExportError(f"torch.{name} in {self.tracer.where()}: a product of activations, as in spiking "
                                 f"attention. {_ATTENTION_HELP}")
        if name in ('add', 'iadd') and len(live) == 2 and torch.is_tensor(args[1]) and kwargs.get('alpha', 1) == 1:
            a, b = live
            if a.shape != b.shape:
                self.fail(f"a broadcasting sum of per-step shapes {a.shape} and {b.shape}")
            bound = None if a.payload.bound is None or b.payload.bound is None else a.payload.bound + b.payload.bound
            return _Value(a.payload.sources + b.payload.sources, bound, (a.payload, b.payload))
        if name in ('mul', 'rmul') and len(live) == 1 and not any(torch.is_tensor(a) and self.tracer.lookup(a) is None
                                                                for a in args):
            scale = next(a for a in args if not torch.is_tensor(a))
            node = nir.Scale(scale=_full(live[0].shape, scale))
            return _Value((self.add('scale', node, [live[0].payload]),), None)
        if name in _PRODUCTS and len(live) >= 1:
            self.fail(f"torch.{name} of activations (e.g. SEW's AND / IAND connect function, a product of spikes)")
        if name == 'mean' and len(live) == 1:
            return self.mean(live[0], args, kwargs, result)
        if name in ('flatten', 'reshape', 'view') and len(live) == 1:
            shape = live[0].shape
            lead = result.dim() - 1
            while lead >= 0 and int(np.prod(result.shape[lead:])) < int(np.prod(shape)):
                lead -= 1
            return self.flatten('flatten', live[0].payload, shape, tuple(result.shape[lead:]),
                                result)
        self.fail(f"torch.{name}")

    def mean(self, t, args, kwargs, result):
        x = args[0]
        dims = args[1] if len(args) > 1 else kwargs.get('dim')
        dims = (dims,) if isinstance(dims, int) else tuple(dims or ())
        dims = sorted(d % x.dim() for d in dims)
        nfeat = len(t.shape)
        if dims and all(d < x.dim() - nfeat for d in dims):   # a mean over time steps: the model's readout
            self.fail("a mean over the time steps inside the network (call the model with return_per_step=True, "
                      "or export the network without its readout)")
        if dims == [x.dim() - 2, x.dim() - 1]:
            keepdim = bool(args[2] if len(args) > 2 else kwargs.get('keepdim', False))
            return self.global_mean('mean', t.payload, t.shape, keepdim)
        self.fail(f"a mean over dims {dims} of a tensor of shape {tuple(x.shape)}")


def _noncausal_help(name: str, module: nn.Module) -> str:
    kind = type(module).__name__
    if kind == 'BurstIF':
        return (f"{name} (BurstIF, conversion method 'exact') fires only after integrating its whole input window "
                f"(accumulate-then-fire): its spike at step t depends on later inputs, which no NIR graph of one time "
                f"step can express. Convert with method='qcfs' (the same thresholds, IF neurons that fire as they "
                f"integrate) to export to NIR")
    return (f"{name} ({kind}) has no NIR export; NIR exports the converted networks' ThresholdIF neurons: convert "
            f"with the default neurons (e.g. signed=False)")


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().float().numpy().copy()


def _pair(v) -> np.ndarray:
    return np.broadcast_to(np.asarray(v, dtype=np.int64).reshape(-1), (2,)).copy()


def _ints(v) -> Tuple[int, int]:
    return tuple(int(i) for i in _pair(v))


def _feature_shape(sample: torch.Tensor) -> Tuple[int, ...]:
    """Per-step, per-sample shape: ``[B, C, H, W]`` -> (C, H, W); ``[B|T, T|B, ...]`` (rank 3 or 5) -> shape[2:]."""
    return tuple(sample.shape[1:]) if sample.dim() == 4 else tuple(sample.shape[2:])


def to_nir(model: nn.Module, sample: torch.Tensor, dt: float = DT,
           input_shape: Optional[Sequence[int]] = None) -> nir.NIRGraph:
    """The NIR graph of ``model`` (see the module docstring), found by running it once on ``sample``.

    ``sample``: the model's usual input (``[B, C, H, W]`` images, also for a converted network
    (:class:`snnzoo.conversion.ConvertedSNN`), ``[B, T, C, H, W]`` frames, or ``[T, B, ...]`` for a multi-step
    ``nn.Sequential``); ``input_shape`` overrides the per-step input shape inferred from it. Models whose
    ``forward`` takes ``return_per_step`` are traced with it, so that the graph ends in per-step outputs. Raises
    :class:`NIRExportError` naming the first module or operation NIR cannot express.
    """
    for name, module in model.named_modules():
        if isinstance(module, _ATTENTION):
            raise NIRExportError(f"{name} ({type(module).__name__}) multiplies activations (the attention matmul, "
                                 f"spike x spike). {_ATTENTION_HELP}")
        if isinstance(module, ConvertedNeuron) and not isinstance(module, ThresholdIF):
            raise NIRExportError(_noncausal_help(name, module))
    shape = tuple(input_shape) if input_shape is not None else _feature_shape(sample)
    builder = _GraphBuilder(model, dt)
    builder.nodes['input'] = nir.Input(input_type={'input': np.array(shape)})
    kwargs = {'return_per_step': True} if 'return_per_step' in inspect.signature(model.forward).parameters else {}
    training = model.training
    model.eval()
    try:
        with torch.no_grad(), builder.tracer as tracer:
            tracer.mark(sample, _Value(('input',), None), shape)
            out = model(sample, **kwargs)
    finally:
        model.train(training)
    traced = builder.tracer.lookup(out)
    if traced is None:
        raise NIRExportError(f"the output of {type(model).__name__} does not depend on its input through operations "
                             f"the exporter could follow")
    builder.add('output', nir.Output(output_type={'output': np.array(traced.shape)}), [traced.payload])
    return nir.NIRGraph(nodes=builder.nodes, edges=builder.edges,
                        metadata={'dt': dt, 'source': 'snnzoo', 'model': type(model).__name__}, type_check=False)


# ---- import ------------------------------------------------------------------------------------------------------

class Heaviside(nn.Module):
    """A memoryless threshold: ``S = [r x + v_leak > threshold]`` at every step (NIR's Threshold, or a LIF with
    tau = dt). Input and output ``[T, B, ...]``."""

    def __init__(self, threshold: float, r: float = 1.0, v_leak: float = 0.0):
        super().__init__()
        self.threshold, self.r, self.v_leak = float(threshold), float(r), float(v_leak)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return ((x * self.r + self.v_leak) > self.threshold).to(x.dtype)


class Sum(nn.Module):
    """NIR's implicit sum of a node's inputs."""

    def forward(self, *xs: torch.Tensor) -> torch.Tensor:
        out = xs[0]
        for x in xs[1:]:
            out = out + x
        return out


def _uniform(node, field: str) -> float:
    values = np.unique(np.asarray(getattr(node, field), dtype=np.float64))
    if values.size != 1:
        raise ValueError(f"{type(node).__name__}.{field} differs between neurons ({values.size} values); snnzoo's "
                         f"neuron layers share one value per layer")
    return float(values[0])


def _meta(node, key: str, default=None):
    value = node.metadata.get(key, default) if isinstance(node.metadata, dict) else default
    if isinstance(value, bytes):
        value = value.decode()
    if isinstance(value, np.ndarray):
        value = value.item()
    return value


def _neuron_module(node: nir.NIRNode, dt: float) -> nn.Module:
    name = _meta(node, 'snnzoo_node')
    if name == 'ThresholdIF':   # a converted network's neuron, written by snnzoo as a soft-reset subgraph
        theta = torch.from_numpy(np.asarray(node.metadata['snnzoo_theta'], np.float32).reshape(-1))
        theta = theta if _meta(node, 'snnzoo_theta_per_channel') else theta[0]
        return _TimeFlattened(ThresholdIF(theta, 1, float(_meta(node, 'snnzoo_v_init')), backend='torch'))
    if name is not None:   # written by snnzoo: the exact neuron
        soft = _meta(node, 'snnzoo_group') is not None
        common = dict(v_threshold=float(_meta(node, 'snnzoo_v_threshold')),
                      v_reset=None if soft else _uniform(node, 'v_reset'),
                      detach_reset=bool(_meta(node, 'snnzoo_detach_reset')),
                      surrogate=str(_meta(node, 'snnzoo_surrogate')), alpha=float(_meta(node, 'snnzoo_alpha')))
        if name == 'IFNode' or isinstance(node, nir.IF):
            return IFNode(**common)
        decay_input = bool(_meta(node, 'snnzoo_decay_input'))
        if _meta(node, 'snnzoo_w') is not None:
            plif = ParametricLIFNode(decay_input=decay_input, **common)
            plif.w.data.fill_(float(_meta(node, 'snnzoo_w')))
            return plif
        return LIFNode(tau=float(_meta(node, 'snnzoo_tau')), decay_input=decay_input, **common)
    v_th = _f32_above(_uniform(node, 'v_threshold'))      # NIR fires on v > v_thr, snnzoo on H >= V_th
    v_reset = _uniform(node, 'v_reset')
    r = _uniform(node, 'r')
    if isinstance(node, nir.IF):
        if not np.isclose(r * dt, 1.0):
            raise ValueError(f"nir.IF with r = {r}: snnzoo's IFNode integrates its input unscaled (r = 1/dt = "
                             f"{1 / dt:g} at dt = {dt:g}); pass the dt the graph was written for")
        return IFNode(v_threshold=v_th, v_reset=v_reset)
    k = dt / _uniform(node, 'tau')
    v_leak = _uniform(node, 'v_leak')
    if np.isclose(k, 1.0):
        return Heaviside(v_th, r, v_leak)
    if not 0 < k < 1:
        raise ValueError(f"nir.LIF with tau = {_uniform(node, 'tau')} at dt = {dt:g} gives a decay dt/tau = {k:g} "
                         f"outside (0, 1]; pass the dt the graph was written for (from_nir(graph, dt=...))")
    if not np.isclose(v_leak, v_reset):
        raise ValueError(f"nir.LIF with v_leak = {v_leak} != v_reset = {v_reset}: snnzoo's LIF decays towards its "
                         f"reset potential")
    if np.isclose(r, 1.0):
        return LIFNode(tau=1.0 / k, decay_input=True, v_threshold=v_th, v_reset=v_reset)
    if np.isclose(r * k, 1.0):
        return LIFNode(tau=1.0 / k, decay_input=False, v_threshold=v_th, v_reset=v_reset)
    raise ValueError(f"nir.LIF with r = {r}: snnzoo's LIF needs r = 1 (input decayed) or r = tau/dt = {1 / k:g} "
                     f"(input not decayed)")


def _shifted(dim: int) -> int:
    return dim + 2 if dim >= 0 else dim


def _node_module(node: nir.NIRNode, dt: float) -> Optional[nn.Module]:
    """The snnzoo module for one NIR node, on multi-step tensors ``[T, B, ...]``."""
    if isinstance(node, (nir.Input, nir.Output)):
        return None
    if isinstance(node, (nir.LIF, nir.IF)):
        return _neuron_module(node, dt)
    if isinstance(node, nir.Threshold):
        return Heaviside(_uniform(node, 'threshold'))
    if isinstance(node, nir.Conv2d):
        w = torch.from_numpy(np.asarray(node.weight, np.float32))
        conv = nn.Conv2d(w.shape[1] * int(node.groups), w.shape[0], tuple(w.shape[2:]), stride=_ints(node.stride),
                         padding=node.padding if isinstance(node.padding, str) else _ints(node.padding),
                         dilation=_ints(node.dilation), groups=int(node.groups))
        conv.weight.data.copy_(w)
        conv.bias.data.copy_(torch.from_numpy(np.asarray(node.bias, np.float32)))
        return MultiStep(conv)
    if isinstance(node, (nir.Affine, nir.Linear)):
        w = torch.from_numpy(np.asarray(node.weight, np.float32))
        linear = nn.Linear(w.shape[1], w.shape[0], bias=isinstance(node, nir.Affine))
        linear.weight.data.copy_(w)
        if isinstance(node, nir.Affine):
            linear.bias.data.copy_(torch.from_numpy(np.asarray(node.bias, np.float32)))
        return MultiStep(linear)
    if isinstance(node, (nir.AvgPool2d, nir.SumPool2d)):
        pool = nn.AvgPool2d(_ints(node.kernel_size), _ints(node.stride), _ints(node.padding),
                            divisor_override=1 if isinstance(node, nir.SumPool2d) else None)
        return MultiStep(pool)
    if isinstance(node, nir.Flatten):
        return nn.Flatten(_shifted(node.start_dim), _shifted(node.end_dim))
    if isinstance(node, nir.Scale):
        return _Scale(torch.from_numpy(np.asarray(node.scale, np.float32)))
    raise ValueError(f"from_nir: NIR node type {type(node).__name__} is not supported by snnzoo (supported: Input, "
                     f"Output, Conv2d, Affine, Linear, AvgPool2d, SumPool2d, Flatten, Scale, Threshold, LIF, IF)")


class _TimeFlattened(nn.Module):
    """A converted network's neuron (which runs on ``[T*B, ...]``) on ``[T, B, ...]``, for any T."""

    def __init__(self, neuron: ThresholdIF):
        super().__init__()
        self.neuron = neuron

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.neuron.T = x.shape[0]
        return self.neuron(x.flatten(0, 1)).unflatten(0, x.shape[:2])


class _Scale(nn.Module):
    def __init__(self, scale: torch.Tensor):
        super().__init__()
        self.register_buffer('scale', scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale


class NIRNetwork(nn.Module):
    """A NIR graph run by snnzoo layers: ``[T, B, *input_shape] -> [T, B, *output_shape]``.

    Nodes run in topological order; a node with several inputs gets their sum. ``nodes`` holds one module per NIR
    node (its name with ``.`` replaced by ``_``).
    """

    def __init__(self, graph: nir.NIRGraph, dt: float):
        super().__init__()
        self.nodes = nn.ModuleDict()
        nodes, edges = _collapse_soft_reset(graph)
        self._key = {name: name.replace('.', '_') for name in nodes}
        inputs: Dict[str, List[str]] = {name: [] for name in nodes}
        for src, dst in edges:
            inputs[dst].append(src)
        self._inputs = inputs
        self._order = _topological_order(nodes, edges)
        self._input = next(n for n, node in nodes.items() if isinstance(node, nir.Input))
        outputs = [n for n, node in nodes.items() if isinstance(node, nir.Output)]
        if len(outputs) != 1:
            raise ValueError(f"from_nir: the graph must have one Output node, it has {len(outputs)}")
        self._output = outputs[0]
        for name in self._order:
            module = _node_module(nodes[name], dt)
            if module is not None:
                self.nodes[self._key[name]] = module
        self._sum = Sum()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        values = {self._input: x}
        for name in self._order:
            if name == self._input:
                continue
            h = self._sum(*[values[src] for src in self._inputs[name]])
            values[name] = h if name == self._output else self.nodes[self._key[name]](h)
        return values[self._output]


def _collapse_soft_reset(graph: nir.NIRGraph) -> Tuple[Dict[str, nir.NIRNode], List[Tuple[str, str]]]:
    """The graph's nodes and edges with each soft-reset subgraph snnzoo wrote (nodes whose metadata names their
    ``snnzoo_group``) replaced by its spiking node, which reads what entered the subgraph's ``.in`` node."""
    group = {n: _meta(node, 'snnzoo_group') for n, node in graph.nodes.items() if _meta(node, 'snnzoo_group')}
    for name in set(group.values()):
        if name not in graph.nodes or _meta(graph.nodes[name], 'snnzoo_role') != 'fire':
            raise ValueError(f"from_nir: the soft-reset subgraph {name!r} has no spiking node of that name; the graph "
                             f"was changed after snnzoo wrote it")
    edges = []
    for src, dst in graph.edges:
        if src in group and dst in group and group[src] == group[dst]:
            continue
        if (src in group and src != group[src]) or (dst in group and _meta(graph.nodes[dst], 'snnzoo_role') != 'in'):
            raise ValueError(f"from_nir: the edge {src} -> {dst} enters or leaves a soft-reset subgraph other than "
                             f"through its '.in' node and its spiking node; the graph was changed after snnzoo "
                             f"wrote it")
        edges.append((group.get(src, src), group.get(dst, dst)))
    nodes = {n: node for n, node in graph.nodes.items() if group.get(n, n) == n}
    return nodes, edges


def _topological_order(nodes: Dict[str, nir.NIRNode], edges: List[Tuple[str, str]]) -> List[str]:
    pending = {name: 0 for name in nodes}
    for _, dst in edges:
        pending[dst] += 1
    ready = [n for n, c in pending.items() if c == 0]
    order = []
    while ready:
        name = ready.pop(0)
        order.append(name)
        for src, dst in edges:
            if src == name:
                pending[dst] -= 1
                if pending[dst] == 0:
                    ready.append(dst)
    if len(order) != len(nodes):
        raise ValueError("from_nir: the graph has a cycle (a recurrent connection) that is not a soft-reset neuron "
                         "snnzoo wrote; snnzoo's layers are feed-forward")
    return order


def from_nir(graph, dt: Optional[float] = None) -> NIRNetwork:
    """A :class:`NIRNetwork` of snnzoo layers running ``graph`` (a ``nir.NIRGraph`` or a path to a NIR file).

    ``dt`` (default: the graph's ``metadata['dt']``, else 1e-4 s, the step snnTorch and Norse write with) turns the
    continuous-time neurons into snnzoo's discrete ones (the inverse of the table in the module docstring). Neurons
    that snnzoo wrote come back exactly (their class and parameters are in the node metadata); others are read from
    their NIR parameters, which must be one value per layer.
    """
    if not isinstance(graph, nir.NIRGraph):
        graph = nir.read(graph)
    if dt is None:
        meta = graph.metadata if isinstance(graph.metadata, dict) else {}
        dt = float(np.asarray(meta.get('dt', DT)))
    for name, node in graph.nodes.items():
        if isinstance(node, nir.NIRGraph):
            raise ValueError(f"from_nir: node {name} is a subgraph (e.g. a recurrent layer); snnzoo reads flat "
                             f"feed-forward graphs")
    return NIRNetwork(graph, dt)
