"""Deployment: NIR export / import for neuromorphic hardware, ONNX export for edge CPUs and GPUs, and inference
fusion (BatchNorm folded into the layer before it).

``fuse`` needs only torch; ``to_nir`` / ``from_nir`` need the ``nir`` package and ``to_onnx`` the ``onnx`` packages
(``pip install 'snnzoo[export]'``); they are imported on first use.
"""
import importlib

from .fuse import fold_bn, fuse

__all__ = ['fuse', 'fold_bn', 'to_nir', 'from_nir', 'NIRExportError', 'to_onnx', 'export_program']

_LAZY = {'to_nir': 'nir', 'from_nir': 'nir', 'NIRExportError': 'nir', 'to_onnx': 'onnx', 'export_program': 'onnx'}


def __getattr__(name):
    if name in _LAZY:
        try:
            module = importlib.import_module(f'.{_LAZY[name]}', __name__)
        except ImportError as e:
            raise ImportError(f"snnzoo.export.{name} needs the optional packages of the 'export' extra ({e.name} is "
                              f"missing): pip install 'snnzoo[export]'") from e
        return getattr(module, name)
    raise AttributeError(f"module 'snnzoo.export' has no attribute {name!r}")
