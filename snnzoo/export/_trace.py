"""Run a model once and see its dataflow: which leaf module produced each tensor, through reshapes.

:class:`DataflowTrace` is a ``TorchFunctionMode`` plus global module hooks. Leaf modules (chosen by type) are seen as
single calls; every torch operation outside them whose inputs include a traced tensor is either a *layout* operation
(reshaping, repeating or moving only the leading batch / time dimensions of the per-sample feature shape; its result
carries the same payload) or is handed to ``on_op``. The caller's payload for each tensor is whatever it wants
(a producing layer, a list of NIR nodes).
"""
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
from torch.overrides import TorchFunctionMode

__all__ = ['DataflowTrace', 'Traced', 'LAYOUT_OPS', 'op_name']

# operations that may only reshape / repeat / move the leading (batch, time) dimensions
LAYOUT_OPS = frozenset({'flatten', 'unflatten', 'view', 'reshape', 'expand', 'expand_as', 'contiguous', 'clone',
                        'detach', 'to', 'float', 'unsqueeze', 'squeeze', 'view_as', 'reshape_as', 'type_as',
                        'transpose', 'permute', 'swapaxes', 'dropout', 'alias'})
_PERMUTES = frozenset({'transpose', 'permute', 'swapaxes'})


def op_name(func) -> str:
    """``torch.add`` / ``Tensor.add`` / ``Tensor.__add__`` -> ``'add'``."""
    return getattr(func, '__name__', str(func)).strip('_')


class Traced:
    """What the trace knows about a tensor: the caller's ``payload`` and its per-sample feature shape ``shape``."""
    __slots__ = ('payload', 'shape')

    def __init__(self, payload: Any, shape: Tuple[int, ...]):
        self.payload, self.shape = payload, tuple(shape)


def _moves_only_leading(name: str, args, kwargs, ndim: int, nfeat: int) -> bool:
    lead = ndim - nfeat
    if name == 'permute':
        dims = args[1:] if len(args) > 2 or not isinstance(args[1], (tuple, list)) else tuple(args[1])
        dims = [d % ndim for d in (kwargs.get('dims', dims))]
        return dims[lead:] == list(range(lead, ndim))
    dims = [d % ndim for d in (list(args[1:3]) or [kwargs.get('dim0'), kwargs.get('dim1')])]
    return all(d < lead for d in dims)


class DataflowTrace(TorchFunctionMode):
    """Context manager: ``with DataflowTrace(model, leaf_types, on_leaf, on_op) as tr: tr.mark(x, payload, shape);
    out = model(x)``; then ``tr.lookup(out)``.

    ``on_leaf(name, module, traced_inputs, inputs, output) -> payload or None`` for each call of a leaf module outside
    another leaf (``traced_inputs``: the :class:`Traced` of each input, None for untraced ones); the output keeps the
    first traced input's feature shape (no traced input: ``output.shape[1:]``) unless ``(payload, shape)`` is returned.
    ``on_op(name, func, traced_inputs, args, kwargs, result) -> payload or None`` for every other operation with a
    traced input that is not a pure layout change, and for the operations named in ``watch`` always. Returning ``(payload, shape)`` gives the result a new feature shape.
    ``where()`` names the innermost module running (for error messages).
    """

    def __init__(self, model: nn.Module, leaf_types: Sequence[type], on_leaf: Callable, on_op: Callable,
                 watch: frozenset = frozenset()):
        super().__init__()
        self.watch = watch
        self.names = {m: n for n, m in model.named_modules()}
        self.leaf_types = tuple(leaf_types)
        self.on_leaf, self.on_op = on_leaf, on_op
        self.values: Dict[int, Traced] = {}
        self._alive: List[torch.Tensor] = []   # keeps traced tensors alive so that their ids stay unique
        self._stack: List[nn.Module] = []
        self._leaf_depth = 0
        self._handles = []

    # -- bookkeeping -------------------------------------------------------------------------------------------
    def mark(self, tensor: torch.Tensor, payload: Any, shape: Tuple[int, ...]) -> None:
        self.values[id(tensor)] = Traced(payload, shape)
        self._alive.append(tensor)

    def lookup(self, tensor) -> Optional[Traced]:
        return self.values.get(id(tensor)) if torch.is_tensor(tensor) else None

    def where(self) -> str:
        for m in reversed(self._stack):
            if self.names.get(m):
                return self.names[m]
        return '<model>'

    def _pre(self, module, args):
        self._stack.append(module)
        if isinstance(module, self.leaf_types):
            self._leaf_depth += 1

    def _post(self, module, args, output):
        self._stack.pop()
        if not isinstance(module, self.leaf_types):
            return None
        self._leaf_depth -= 1
        if self._leaf_depth or module not in self.names:
            return None
        traced = [self.lookup(a) for a in args]
        with torch.overrides._pop_mode_temporarily():
            result = self.on_leaf(self.names[module], module, traced, args, output)
        self._store(output, result, traced)
        return None

    def _store(self, output, result, traced) -> None:
        if result is None or not torch.is_tensor(output):
            return
        if isinstance(result, tuple):
            payload, shape = result
        else:
            payload, shape = result, next((t.shape for t in traced if t is not None), tuple(output.shape[1:]))
        self.mark(output, payload, shape)

    def __enter__(self):
        self._handles = [nn.modules.module.register_module_forward_pre_hook(self._pre),
                         nn.modules.module.register_module_forward_hook(self._post)]
        return super().__enter__()

    def __exit__(self, *exc):
        for h in self._handles:
            h.remove()
        return super().__exit__(*exc)

    # -- operations --------------------------------------------------------------------------------------------
    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        result = func(*args, **kwargs)
        if self._leaf_depth:
            return result
        flat = list(args) + [a for v in args if isinstance(v, (list, tuple)) for a in v] + list(kwargs.values())
        traced = [self.lookup(a) for a in flat]
        name = op_name(func)
        if not any(t is not None for t in traced) and name not in self.watch:
            return result
        if name in LAYOUT_OPS and torch.is_tensor(result) and self._is_layout(name, args, kwargs, traced, result):
            self.mark(result, traced[0].payload, traced[0].shape)
            return result
        if name in ('dim', 'size', 'numel', 'is_floating_point', 'get', 'is_contiguous', 'stride',
                    'data_ptr', 'untyped_storage', 'element_size', 'is_complex', 'storage_offset'):
            return result
        out = self.on_op(name, func, traced, args, kwargs, result)
        self._store(result, out, traced)
        return result

    @staticmethod
    def _is_layout(name, args, kwargs, traced, result) -> bool:
        src = traced[0]
        if src is None or not torch.is_tensor(args[0]) or sum(t is not None for t in traced) != 1:
            return False
        n = len(src.shape)
        if n and tuple(result.shape[-n:]) != src.shape or result.dim() < n:
            return False
        if name in _PERMUTES:
            return _moves_only_leading(name, args, kwargs, args[0].dim(), n)
        return True
