"""ONNX export (``torch.export`` + ``torch.onnx``), for onnxruntime on edge CPUs and GPUs.

The neurons' recurrence over T is unrolled: under ``torch.export`` the neurons run
:func:`snnzoo.layers.neuron._traceable_multistep` (out-of-place ops, bit-equal to the eager path), so the graph holds
one copy of every weight (the file is about the size of the parameters) and has a dynamic batch dimension. The model
input is the model's usual input: static images ``[B, C, H, W]`` (repeated over T inside) or event frames
``[B, T, C, H, W]``; the output its logits ``[B, num_classes]``.
"""
import copy
from pathlib import Path
from typing import Optional, Union

import torch
import torch.nn as nn

from .fuse import fuse as fuse_bn

__all__ = ['to_onnx', 'export_program', 'default_sample']


def default_sample(model: nn.Module, batch: int = 2) -> torch.Tensor:
    """A random input of the model's default size (``pretrained_cfg['input_size']``)."""
    cfg = getattr(model, 'pretrained_cfg', None) or {}
    if 'input_size' not in cfg:
        raise ValueError(f"{type(model).__name__} has no pretrained_cfg['input_size']; pass a sample input")
    return torch.randn(batch, *cfg['input_size'])


def _prepared(model: nn.Module, sample: Optional[torch.Tensor], T: Optional[int], fuse: bool, train: bool):
    model = copy.deepcopy(model)
    if T is not None:
        if not hasattr(model, 'T'):
            raise ValueError(f"T={T} given but {type(model).__name__} has no attribute T (its T is the input's)")
        model.T = int(T)
    sample = default_sample(model) if sample is None else sample
    if sample.shape[0] < 2:
        raise ValueError(f"the sample needs a batch of at least 2 (got {tuple(sample.shape)}) so that torch.export "
                         f"can keep the batch dimension dynamic")
    if fuse and not train:
        model = fuse_bn(model, sample, inplace=True)
    return model.train(train), sample


def export_program(model: nn.Module, sample: Optional[torch.Tensor] = None, T: Optional[int] = None,
                   dynamic_batch: bool = True, train: bool = False, fuse: bool = False
                   ) -> torch.export.ExportedProgram:
    """``torch.export`` of ``model`` (a copy) with the recurrence unrolled over T.

    ``train=False``: an inference program (eval mode, no grad). ``train=True``: a training program (train-mode
    BatchNorm, surrogate gradients through ``spike_fn``): ``program.module()(x).sum().backward()`` fills the gradients
    of the program's parameters. ``fuse``: fold BatchNorm first (inference only).
    """
    model, sample = _prepared(model, sample, T, fuse, train)
    dynamic_shapes = ({0: torch.export.Dim('batch', min=1, max=65536)},) if dynamic_batch else None
    with torch.set_grad_enabled(train):
        return torch.export.export(model, (sample,), dynamic_shapes=dynamic_shapes)


def to_onnx(model: nn.Module, path: Union[str, Path], sample: Optional[torch.Tensor] = None, T: Optional[int] = None,
            dynamic_batch: bool = True, fuse: bool = False, opset: Optional[int] = None) -> Path:
    """Write ``model`` (eval mode) as one self-contained ONNX file; returns its path.

    ``sample``: an input of the right shape (default: the model's ``pretrained_cfg['input_size']``, batch 2);
    ``T``: the number of time steps a static image is repeated for (default: the model's); ``dynamic_batch``: the
    batch dimension is symbolic (``'batch'``); ``fuse``: fold BatchNorm into the preceding layers first
    (onnxruntime folds Conv-BN by itself, so this mainly shrinks the file). Weights are stored once: the file is
    about the size of the parameters.
    """
    program = export_program(model, sample, T, dynamic_batch, fuse=fuse)
    kwargs = {} if opset is None else {'opset_version': opset}
    onnx_program = torch.onnx.export(program, dynamo=True, external_data=False, verbose=False, **kwargs)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx_program.save(str(path))
    return path
