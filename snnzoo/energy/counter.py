"""Counting the multiply-accumulates of forward passes, operator by operator, and classifying them as MAC or AC.

A :class:`Profiler` runs a model under a ``TorchDispatchMode``, which sees every aten operator, so the functional
``q @ k.transpose(-2, -1)`` of an attention block is counted like a layer. Each counted operator is attributed to the
innermost module whose forward was running (forward pre/post hooks keep a stack of module names while profiling), or,
when its weight belongs to a descendant of that module (a layer applied functionally, ``F.conv1d(x, proj.weight)``),
to the weight's module.

Counted operators and their FLOPs (MAC-equivalents of the op as an ANN computes it):

- convolution ``x [N, C_in, *S] * w [C_out, C_in/G, *K] -> [N, C_out, *S_out]``:
  ``N C_out prod(S_out) (C_in/G) prod(K)``; transposed: ``N C_in prod(S) (C_out/G) prod(K)``
- ``mm / addmm / bmm / baddbmm / addbmm / mv / addmv / dot / linear`` (``matmul``, ``einsum`` and ``nn.Linear``
  reach these): ``batch n k m`` for ``[batch, n, k] @ [batch, k, m]``
- fused scaled-dot-product attention: two matmuls, ``q k^T`` and ``softmax(.) v``.

Element-wise work (additions, BatchNorm, neuron updates, Hadamard masks such as SDT's SDSA), pooling and softmax are
not multiply-accumulates of two operands and are not counted, as in the papers' conventions.

Operands are weights (a view of a parameter or buffer of the model, or a dtype cast of one, as autocast makes; a
convolution's kernel is always a weight) or activations. An activation is a spike tensor when all its values are in
{0, 1}. Classification (SPEC section 6):

- no spike operand: every product is a MAC (``macs = flops``);
- spike x real: an AC for each product a non-zero spike takes part in, i.e. non-zero spikes x the fan-out actually
  used. For a convolution that is ``(C_out/G) sum_p nnz(p) cover(p)`` where ``nnz(p)`` counts the non-zero inputs at
  spatial position ``p`` over batch and channels and ``cover(p)`` is the number of (output position, kernel tap)
  pairs that read ``p`` (stride, padding and dilation included, so borders are exact);
- spike x spike (two activations): an AC per coincidence, ``sum_l nnz(A[:, l]) nnz(B[l, :])``.

Per call the firing rate ``fr`` of the op's input (its non-zero fraction) is recorded for the paper convention: the
activation for a weight op; for two activations, the spike operand when exactly one is binary, else the sparser one.
On a GPU nothing waits for the device while counting: the per-call figures stay there until the report is built.
"""
import functools
import math
from typing import Iterable, NamedTuple, Optional, Union

import torch
import torch.nn as nn
from torch.utils._python_dispatch import TorchDispatchMode

from .report import EnergyReport

__all__ = ['Profiler', 'profile']

aten = torch.ops.aten
_HOST_DEVICES = ('cpu',)       # devices whose tensors can be inspected without waiting for a device queue


class _Operand:
    """One operand of a counted op: whether it is a weight, and (for activations) its spike statistics.

    ``binary`` (a 0-dim bool tensor) holds when all values are in {0, 1}; ``nnz`` counts the non-zero entries (float64,
    exact); ``nonzero`` is their 0/1 indicator; ``integer`` (checked for the first op of a forward pass only, for the
    paper convention) holds when all values are integers.

    On the CPU the answers are known at once (``known_binary`` is a Python bool) and a spike tensor is its own
    indicator: ``aminmax``, a ``ceil`` comparison and one sum. On other devices nothing waits for the device: the
    indicator is ``ceil(min(|x|, 1))`` and every answer stays a device tensor (``known_binary`` is None).
    """

    def __init__(self, tensor: Optional[torch.Tensor], is_weight: bool, check_integer: bool = False):
        self.is_weight = is_weight
        self.is_activation = tensor is not None and not is_weight
        self.integer = None
        self.known_binary = None
        if not self.is_activation:
            return
        if tensor.device.type in _HOST_DEVICES:
            self._host_stats(tensor, check_integer)
        else:
            self.nonzero = tensor.abs().clamp_(max=1).ceil_()
            self.nnz = _count(self.nonzero)
            self.binary = torch.sub(self.nonzero, tensor).abs_().sum() == 0
            if check_integer:
                self.integer = torch.sub(tensor, tensor.round()).abs_().sum() == 0
        self.fr = self.nnz / max(tensor.numel(), 1)

    def _host_stats(self, tensor: torch.Tensor, check_integer: bool) -> None:
        binary = True
        if tensor.numel():
            lo, hi = torch.aminmax(tensor)                   # NaN fails both comparisons
            binary = bool(lo >= 0) and bool(hi <= 1) and torch.equal(tensor, tensor.ceil())
        self.known_binary = binary
        self.binary = torch.tensor(binary)
        self.nonzero = tensor if binary else None
        self.nnz = _count(tensor) if binary else torch.count_nonzero(tensor).double()
        if check_integer:
            self.integer = torch.tensor(binary or torch.equal(tensor, tensor.round()))

    def hits(self, dim: int, shape: tuple, default: int) -> torch.Tensor:
        """Non-zero entries of the activation viewed as ``shape``, summed over ``dim`` (float64, exact); every entry
        counts (``default`` = the size of ``dim``) when the activation is not binary."""
        if self.known_binary is False:
            return torch.full((), float(default), dtype=torch.float64)
        counts = self.nonzero.reshape(shape).sum(dim, dtype=torch.float32).double()
        return counts if self.known_binary else torch.where(self.binary, counts, float(default))


def _count(indicator: torch.Tensor) -> torch.Tensor:
    """Exact sum of a 0/1 tensor as float64: float32 partial sums along the last axis (exact below 2**24)."""
    if indicator.dim() == 0 or indicator.shape[-1] >= 2 ** 24:
        return indicator.sum(dtype=torch.float64)
    return indicator.sum(-1, dtype=torch.float32).sum(dtype=torch.float64)


class _CallRecord(NamedTuple):
    """One counted op call: its row key ``(module name, op, index)``, FLOPs, input shape and device figures."""
    key: tuple
    module_type: str
    flops: int
    input_shape: tuple
    stats: torch.Tensor      # float64 [binary, acs_if_binary, fr, integer]


def _stats(binary, acs, fr, integer, device) -> torch.Tensor:
    """``[binary, acs_if_binary, fr, integer]`` as one float64 device tensor (terms are tensors or Python numbers; a
    number is filled on the device, not copied from the host, so CUDA streams are not synchronised)."""
    parts = [t.to(torch.float64) if isinstance(t, torch.Tensor)
             else torch.full((), float(t), dtype=torch.float64, device=device) for t in (binary, acs, fr, integer)]
    return torch.stack(parts)


def _integer(*ops: _Operand):
    """Whether every activation operand is integer-valued (False when unchecked or when an operand is real)."""
    flag = None
    for op in ops:
        if op.is_weight:
            continue
        if op.integer is None:
            return False
        flag = op.integer if flag is None else flag & op.integer
    return False if flag is None else flag


def _drive(a: _Operand, b: _Operand):
    """(binary, fr) of a two-operand op: the spike operand drives it; for two activations see the module docstring."""
    if a.is_activation and b.is_activation:
        fr = torch.where(a.binary & ~b.binary, a.fr,
                         torch.where(b.binary & ~a.binary, b.fr, torch.minimum(a.fr, b.fr)))
        return a.binary | b.binary, fr
    for op in (a, b):
        if op.is_activation:
            return op.binary, op.fr
    return False, 1.0


def _matmul(a: _Operand, b: _Operand, n: int, k: int, m: int, batch: int, device):
    """FLOPs and stats of ``[batch, n, k] @ [batch, k, m]``; operands given as ``[batch, n, k]`` / ``[batch, k, m]``."""
    flops = batch * n * k * m
    binary, fr = _drive(a, b)
    if a.is_activation and b.is_activation:     # products per inner index l: (rows of A hit) x (columns of B hit)
        rows = a.hits(1, (batch, n, k), n)
        cols = b.hits(2, (batch, k, m), m)
        acs = (rows * cols).sum()
    elif a.is_activation:
        acs = a.nnz * m
    elif b.is_activation:
        acs = b.nnz * n
    else:
        acs = 0.0
    return flops, _stats(binary, acs, fr, _integer(a, b), device)


@functools.lru_cache(maxsize=1024)
def _cover_1d(size: int, out_size: int, kernel: int, stride: int, padding: int, dilation: int,
              transposed: bool) -> tuple:
    """For each input position along one axis, the number of (output position, kernel tap) pairs that use it."""
    taps = torch.arange(kernel) * dilation
    if transposed:      # input i feeds output i*stride - padding + tap, when that lies in [0, out_size)
        pos = torch.arange(size)[:, None] * stride - padding + taps[None, :]
        return tuple(((pos >= 0) & (pos < out_size)).sum(1).tolist())
    pos = (torch.arange(out_size)[:, None] * stride - padding + taps[None, :]).flatten()
    pos = pos[(pos >= 0) & (pos < size)]
    return tuple(torch.bincount(pos, minlength=size).tolist())


@functools.lru_cache(maxsize=256)
def _cover(spatial, out_spatial, kernel, stride, padding, dilation, transposed, device) -> torch.Tensor:
    """``cover(p)`` over the spatial grid ``[*S]`` (float64): the outer product of the per-axis covers.

    Cached per geometry and device, so the host-to-device copy happens once, not in every forward pass."""
    cover = torch.ones((), dtype=torch.float64)
    for d in range(len(spatial)):
        axis = torch.tensor(_cover_1d(spatial[d], out_spatial[d], kernel[d], stride[d], padding[d], dilation[d],
                                      transposed), dtype=torch.float64)
        cover = cover.unsqueeze(-1) * axis
    return cover.to(device)


def _count_convolution(profiler, args, out):
    x, w = args[0], args[1]
    stride, padding, dilation, transposed, output_padding, groups = args[3:9]
    nd = w.dim() - 2
    kernel = tuple(w.shape[2:])
    flops = (x.numel() if transposed else out.numel()) * w.shape[1] * math.prod(kernel)
    xo = profiler.operand(x)
    if xo.known_binary is False:
        binary, acs, fr = False, 0.0, xo.fr
    elif xo.is_activation:
        fan_out = w.shape[1] if transposed else w.shape[0] // groups    # output channels each input channel feeds
        nnz_map = xo.nonzero.sum(1, dtype=torch.float32).sum(0, dtype=torch.float64)     # [*S], exact
        cover = _cover(tuple(x.shape[2:]), tuple(out.shape[2:]), kernel, _expand(stride, nd), _expand(padding, nd),
                       _expand(dilation, nd), bool(transposed), x.device)
        binary, acs, fr = xo.binary, (nnz_map * cover).sum() * fan_out, xo.fr
    else:
        binary, acs, fr = False, 0.0, 1.0
    op = f"conv{'_transpose' if transposed else ''}{nd}d"
    profiler.record(op, flops, tuple(x.shape), _stats(binary, acs, fr, _integer(xo), x.device), weight=w)


def _expand(v, nd: int) -> tuple:
    """A per-axis tuple from aten's int list (one value for all axes, or one per axis)."""
    return tuple(v) if len(v) == nd else tuple(v) * nd


def _count_matmul(profiler, a, b, n: int, k: int, m: int, batch: int):
    """``a @ b`` with ``a`` viewable as ``[batch, n, k]`` and ``b`` as ``[batch, k, m]``."""
    ao, bo = profiler.operand(a), profiler.operand(b)
    flops, stats = _matmul(ao, bo, n, k, m, batch, a.device)
    op = 'linear' if (ao.is_weight or bo.is_weight) else 'matmul'
    shape = tuple((b if bo.is_activation and not ao.is_activation else a).shape)
    profiler.record(op, flops, shape, stats, weight=a if ao.is_weight else b if bo.is_weight else None)


def _count_mm(profiler, a, b):
    """mm / bmm and their add- forms: ``a [..., n, k] @ b [..., k, m]`` with equal batch dims."""
    _count_matmul(profiler, a, b, a.shape[-2], a.shape[-1], b.shape[-1], math.prod(a.shape[:-2]))


def _count_sdpa(profiler, args, out):
    """Fused attention ``softmax(q k^T s) v`` with q ``[..., L, E]``, k ``[..., S, E]``, v ``[..., S, Ev]``."""
    q, k, v = args[:3]
    if k.shape[:-2] != q.shape[:-2]:        # grouped-query attention: share each k/v head among q heads
        rep = q.shape[-3] // k.shape[-3]
        k, v = k.repeat_interleave(rep, -3), v.repeat_interleave(rep, -3)
    _count_mm(profiler, q, k.transpose(-2, -1))
    probs = _Operand(None, False)           # the softmax output: dense and real-valued
    flops, stats = _matmul(probs, profiler.operand(v), q.shape[-2], k.shape[-2], v.shape[-1],
                           math.prod(q.shape[:-2]), q.device)
    profiler.record('matmul', flops, tuple(v.shape), stats)


_HANDLERS = {
    aten.convolution: _count_convolution,
    aten._convolution: _count_convolution,
    aten.mm: lambda p, args, out: _count_mm(p, args[0], args[1]),
    aten.bmm: lambda p, args, out: _count_mm(p, args[0], args[1]),
    aten.addmm: lambda p, args, out: _count_mm(p, args[1], args[2]),
    aten._addmm_activation: lambda p, args, out: _count_mm(p, args[1], args[2]),
    aten.baddbmm: lambda p, args, out: _count_mm(p, args[1], args[2]),
    aten.addbmm: lambda p, args, out: _count_mm(p, args[1], args[2]),
    aten.mv: lambda p, args, out: _count_matmul(p, args[0], args[1], *args[0].shape, 1, 1),
    aten.addmv: lambda p, args, out: _count_matmul(p, args[1], args[2], *args[1].shape, 1, 1),
    aten.dot: lambda p, args, out: _count_matmul(p, args[0], args[1], 1, args[0].numel(), 1, 1),
    aten.vdot: lambda p, args, out: _count_matmul(p, args[0], args[1], 1, args[0].numel(), 1, 1),
    aten.linear: lambda p, args, out: _count_matmul(p, args[0], args[1].t(), args[0].numel() // args[0].shape[-1],
                                                    args[0].shape[-1], args[1].shape[0], 1),
}
for _name in ('_scaled_dot_product_flash_attention_for_cpu', '_scaled_dot_product_flash_attention',
              '_scaled_dot_product_efficient_attention', '_scaled_dot_product_cudnn_attention',
              '_scaled_dot_product_fused_attention_overrideable'):
    if hasattr(aten, _name):
        _HANDLERS[getattr(aten, _name)] = _count_sdpa


class _CountingMode(TorchDispatchMode):
    def __init__(self, profiler: 'Profiler'):
        super().__init__()
        self.profiler = profiler

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        packet = func.overloadpacket
        handler = _HANDLERS.get(packet)
        if handler is not None:
            handler(self.profiler, args, out)
        elif packet is aten._to_copy and self.profiler.is_weight(args[0]):
            self.profiler.add_weight(out, args[0])
        return out


class _ModuleState:
    """Everything a forward pass could change in a module tree, restored exactly afterwards.

    Per module: the attribute dict (``training``, a stateful neuron's membrane ``v``, counters), the contents of its
    dict-valued attributes (parameters, buffers, SpikingJelly's ``_memories``) and the values of its tensors.
    """

    def __init__(self, model: nn.Module):
        self.saved = []
        for m in model.modules():
            attrs = dict(vars(m))
            dicts = {k: dict(v) for k, v in attrs.items() if type(v) is dict}
            tensors = [(t, t.detach().clone()) for t in _tensors(attrs, dicts) if not isinstance(t, nn.Parameter)]
            self.saved.append((m, attrs, dicts, tensors))

    def restore(self) -> None:
        with torch.no_grad():
            for m, attrs, dicts, tensors in self.saved:
                for k in set(vars(m)) - set(attrs):
                    delattr(m, k)
                vars(m).update(attrs)
                for k, contents in dicts.items():
                    attrs[k].clear()
                    attrs[k].update(contents)
                for t, value in tensors:
                    if not torch.equal(t, value):
                        t.copy_(value)


def _tensors(attrs: dict, dicts: dict):
    for v in list(attrs.values()) + [x for d in dicts.values() for x in d.values()]:
        if isinstance(v, torch.Tensor):
            yield v


class Profiler:
    """Count the operations of one or more forward passes of ``model`` (eval mode, no autograd).

    Use as a context manager; ``profiler(x)`` runs ``model(x)`` for a batch ``x [B, ...]`` (B along ``batch_dim``)
    and returns its output; :meth:`report` gives the per-image figures over every batch run so far. On exit the
    model's state (train/eval flags, parameters, buffers, any stateful neuron's membrane) is exactly what it was on
    entry::

        with Profiler(model) as p:
            for x, _ in loader:
                p(x)
        report = p.report()
    """

    def __init__(self, model: nn.Module, batch_dim: int = 0):
        if not isinstance(model, nn.Module):
            raise TypeError(f"profile expects an nn.Module, got {type(model).__name__}")
        self.model = model
        self.batch_dim = batch_dim
        self.images = 0
        self.input_shape = None
        self._calls: list = []
        self._stack: list = []
        self._names = {m: n for n, m in model.named_modules()}
        self._weights: dict = {}
        self._weight_copies: list = []
        self._first_op = False
        self._handles = []
        self._state = None

    def __enter__(self) -> 'Profiler':
        self._weights = {}                  # storage -> (name, class) of the module owning the parameter / buffer
        for module, name in self._names.items():
            for t in (*module.parameters(recurse=False), *module.buffers(recurse=False)):
                if _storage(t) is not None:
                    self._weights.setdefault(_storage(t), (name, type(module).__name__))
        self._state = _ModuleState(self.model)
        self.model.eval()
        for module, name in self._names.items():
            self._handles.append(module.register_forward_pre_hook(functools.partial(self._enter_module, name)))
            self._handles.append(module.register_forward_hook(self._exit_module, always_call=True))
        return self

    def __exit__(self, *exc) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()
        self._stack.clear()
        self._state.restore()

    def __call__(self, x: torch.Tensor):
        if self._state is None:
            raise RuntimeError("use the Profiler as a context manager: `with Profiler(model) as p: p(x)`")
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"profile expects an input tensor [B, ...], got {type(x).__name__}")
        if x.device.type == 'meta' or x.dim() == 0:
            raise ValueError(f"profile needs a real input batch [B, ...] with values (spikes are counted from them), "
                             f"got shape {tuple(x.shape)} on {x.device}")
        x = x.to(_model_device(self.model, x.device))
        self._first_op = True
        try:
            with torch.no_grad(), _CountingMode(self):
                out = self.model(x)
        finally:
            for t in self._weight_copies:
                self._weights.pop(_storage(t), None)
            self._weight_copies.clear()
        self.images += x.shape[self.batch_dim]
        self.input_shape = self.input_shape or tuple(x.shape)
        return out

    def operand(self, t: torch.Tensor) -> _Operand:
        """Statistics of an op's operand; integer-valuedness is checked for the first op of a forward pass only."""
        return _Operand(t, self.is_weight(t), check_integer=self._first_op)

    def is_weight(self, t: torch.Tensor) -> bool:
        """Whether ``t`` is a view of one of the model's parameters or buffers (or of a cast of one)."""
        return isinstance(t, torch.Tensor) and t.numel() > 0 and _storage(t) in self._weights

    def add_weight(self, copy: torch.Tensor, weight: torch.Tensor) -> None:
        """Treat ``copy`` (a cast of ``weight``) as that weight until the end of this forward pass (it is kept alive
        until then, so that its memory cannot be reused by an activation)."""
        self._weights[_storage(copy)] = self._weights[_storage(weight)]
        self._weight_copies.append(copy)

    def record(self, op: str, flops: int, input_shape: tuple, stats: torch.Tensor,
               weight: Optional[torch.Tensor] = None) -> None:
        """Add one op call, attributed to the innermost running module, or to the descendant of it that owns
        ``weight`` (a layer applied functionally, e.g. ``F.conv1d(x, self.proj.weight)``); ``index`` numbers the
        calls of ``op`` by that module within one forward of the running module."""
        name, module_type, counts = self._stack[-1] if self._stack else ('', type(self.model).__name__, {})
        if weight is not None:
            owner, owner_type = self._weights.get(_storage(weight), (name, module_type))
            if name == '' or owner == name or owner.startswith(name + '.'):
                name, module_type = owner, owner_type
        index = counts.get((name, op), 0)
        counts[(name, op)] = index + 1
        self._first_op = False
        self._calls.append(_CallRecord((name, op, index), module_type, flops, input_shape, stats))

    def report(self, meta: Optional[dict] = None) -> EnergyReport:
        """Per-image figures of every op counted so far (see :class:`snnzoo.energy.EnergyReport`)."""
        if self.images == 0:
            raise RuntimeError("no batch was profiled: call the profiler on at least one input batch")
        values = _gather([c.stats for c in self._calls])
        rows: dict = {}
        for call, (binary, acs, fr, integer) in zip(self._calls, values):
            row = rows.get(call.key)
            if row is None:
                row = rows[call.key] = dict(name=call.key[0], module=call.module_type, op=call.key[1],
                                            index=call.key[2], calls=0, input_shape=list(call.input_shape),
                                            flops=0, macs=0.0, acs=0.0, fr_flops=0.0, binary_input=True,
                                            integer_input=True)
            row['calls'] += 1
            row['flops'] += call.flops
            row['macs'] += 0.0 if binary else call.flops
            row['acs'] += acs if binary else 0.0
            row['fr_flops'] += fr * call.flops
            row['binary_input'] &= bool(binary)
            row['integer_input'] &= bool(integer)
        meta = dict(meta or {}, model=(meta or {}).get('model', type(self.model).__name__),
                    input_shape=list(self.input_shape), batch_dim=self.batch_dim)
        return EnergyReport.from_counts(list(rows.values()), images=self.images, meta=meta)

    def _enter_module(self, name, module, args):
        self._stack.append((name, type(module).__name__, {}))

    def _exit_module(self, module, args, output):
        if self._stack:
            self._stack.pop()


def _storage(t: torch.Tensor) -> Optional[int]:
    try:
        return t.untyped_storage().data_ptr()
    except (RuntimeError, NotImplementedError):     # tensors without storage (sparse, some subclasses)
        return None


def _gather(stats: list) -> list:
    """Bring every call's device figures to the host in one transfer per device."""
    out = [None] * len(stats)
    by_device: dict = {}
    for i, s in enumerate(stats):
        by_device.setdefault(s.device, []).append(i)
    for idx in by_device.values():
        values = torch.stack([stats[i] for i in idx]).cpu().tolist()
        for i, v in zip(idx, values):
            out[i] = v
    return out


def _model_device(model: nn.Module, default: torch.device) -> torch.device:
    for t in (*model.parameters(), *model.buffers()):
        return t.device
    return default


Batches = Union[torch.Tensor, Iterable]


def profile(model: nn.Module, x: Batches, *, batch_dim: int = 0, max_batches: Optional[int] = None,
            meta: Optional[dict] = None) -> EnergyReport:
    """Count every multiply-accumulate of ``model``'s forward pass on ``x`` and return the per-image energy report.

    Args:
        model: any ``nn.Module``; it runs in eval mode without autograd, and its state (train/eval flags,
            parameters, buffers, stateful neurons) is left exactly as it was.
        x: an input batch ``[B, ...]`` (e.g. ``[B, C, H, W]`` images or ``[B, T, C, H, W]`` event frames), or an
            iterable of batches (tensors, or tuples/lists whose first item is the input, as a DataLoader yields).
        batch_dim: the dimension of ``x`` that counts images (1 for a model that takes ``[T, B, ...]``).
        max_batches: stop after this many batches of an iterable.
        meta: extra fields for the report (e.g. ``{'model': 'spikformer_4_384_cifar', 'data': 'cifar10'}``).

    Returns:
        :class:`snnzoo.energy.EnergyReport` with figures per image (divided by the number of images).
    """
    with Profiler(model, batch_dim) as p:
        for i, batch in enumerate([x] if isinstance(x, torch.Tensor) else x):
            if max_batches is not None and i >= max_batches:
                break
            p(batch[0] if isinstance(batch, (tuple, list)) else batch)
    return p.report(meta)
