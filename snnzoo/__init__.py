"""snnzoo: spiking Transformers and spiking ResNets for PyTorch.

``import snnzoo`` registers every model with timm; it imports neither hydra, wandb nor cupy.
"""
from ._lazy import import_timm_without_wandb

import_timm_without_wandb()

from . import layers, models  # noqa: E402
from .models import create_model, list_models, list_pretrained, load_checkpoint  # noqa: E402

__version__ = '0.1.0'
__all__ = ['create_model', 'list_models', 'list_pretrained', 'load_checkpoint', 'layers', 'models', 'energy']


def __getattr__(name):
    if name == 'energy':
        import importlib
        return importlib.import_module('snnzoo.energy')
    raise AttributeError(f"module 'snnzoo' has no attribute {name!r}")
