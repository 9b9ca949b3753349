"""Loading snnzoo's own weights and the original repositories' checkpoints into snnzoo models.

Accepted: a state_dict, or a file holding one: safetensors (snnzoo's format), or a ``.pth`` / ``.pth.tar`` written by
an original repository (the state_dict directly, or under ``model`` / ``state_dict`` / ``model_ema`` /
``state_dict_ema``; keys possibly prefixed ``module.``). ``.pth`` files are untrusted: they are read with
``weights_only=True``, allowing only plain containers, tensors and ``argparse.Namespace`` (the original training
scripts store their args).

Each family module may define ``checkpoint_filter_fn(state_dict, model) -> state_dict`` (timm's convention) that maps
the original's parameter names to snnzoo's and drops, by name, the parameters the original builds but never uses.
"""
import argparse
import os
import pickle
import sys
from collections.abc import Mapping
from typing import Union

import torch
import torch.nn as nn

__all__ = ['load_checkpoint', 'read_state_dict', 'filter_checkpoint', 'check_state_dict_fits']

_WRAPPER_KEYS = ('model', 'state_dict', 'model_state_dict', 'module')


def read_state_dict(path: Union[str, os.PathLike], use_ema: bool = False) -> dict:
    """Read a state_dict from a safetensors or (weights-only) torch file; unwrap and strip ``module.``."""
    path = os.fspath(path)
    if os.path.isdir(path):
        raise IsADirectoryError(f"checkpoint {path!r} is a folder, not a weights file: give the file inside it "
                                f"(model.safetensors, checkpoints/last.pt or the original .pth); to rebuild a whole "
                                f"run use snnzoo-eval checkpoint={path} or snnzoo.train.checkpoint.load_trained_model")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint {path!r} does not exist")
    size = os.path.getsize(path)
    if size == 0:
        raise ValueError(f"checkpoint {path!r} is empty (0 bytes): the save that wrote it was interrupted or the "
                         f"copy failed; copy or download the file again")
    if path.endswith('.safetensors'):
        from safetensors import SafetensorError
        from safetensors.torch import load
        with open(path, 'rb') as f:
            data = f.read()
        try:
            return load(data)
        except SafetensorError as e:
            raise ValueError(f"safetensors file {path!r} ({size} bytes) is truncated or corrupt ({e}); copy or "
                             f"download it again") from e
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            obj = torch.load(path, map_location='cpu', weights_only=True)
    except pickle.UnpicklingError as e:
        raise RuntimeError(f"{path!r} holds pickled objects other than tensors and plain containers, which snnzoo "
                           f"never unpickles ({e}). If it is your own file, load it yourself and save only its "
                           f"state_dict: torch.save(model.state_dict(), path)") from e
    except (RuntimeError, EOFError, OSError, ValueError) as e:
        raise RuntimeError(f"checkpoint {path!r} ({size} bytes) is truncated or corrupt and cannot be read ({e}); "
                           f"copy or download it again") from e
    return unwrap_state_dict(obj, use_ema=use_ema)


def unwrap_state_dict(obj, use_ema: bool = False) -> dict:
    """The tensor dict inside a training checkpoint, with any ``module.`` prefix (DDP / DataParallel) removed."""
    if not isinstance(obj, Mapping):
        raise TypeError(f"a checkpoint must be a dict of tensors, got {type(obj).__name__}")
    keys = (('model_ema', 'state_dict_ema') if use_ema else ()) + _WRAPPER_KEYS
    for key in keys:
        if key in obj and isinstance(obj[key], Mapping):
            obj = obj[key]
            break
    sd = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if not sd:
        raise ValueError(f"no tensors found in the checkpoint (top-level keys: {sorted(obj)[:10]})")
    if all(k.startswith('module.') for k in sd):
        sd = {k[len('module.'):]: v for k, v in sd.items()}
    return sd


def filter_checkpoint(state_dict: dict, model: nn.Module) -> dict:
    """Apply the model family's ``checkpoint_filter_fn`` (if any) to an original checkpoint."""
    fn = getattr(sys.modules.get(type(model).__module__), 'checkpoint_filter_fn', None)
    return fn(state_dict, model) if fn is not None else state_dict


def load_checkpoint(model: nn.Module, path_or_state_dict, strict: bool = True, use_ema: bool = False) -> nn.Module:
    """Load snnzoo weights or an original repository's checkpoint into ``model``; returns ``model``.

    Fails with the missing and unexpected keys (and any shape mismatch) listed when the checkpoint belongs to another
    architecture or configuration.
    """
    if isinstance(path_or_state_dict, Mapping):
        sd = unwrap_state_dict(path_or_state_dict, use_ema=use_ema)
    else:
        sd = read_state_dict(path_or_state_dict, use_ema=use_ema)
    sd = filter_checkpoint(sd, model)
    check_state_dict_fits(model, sd, strict=strict)
    model.load_state_dict(sd, strict=strict)
    return model


def check_state_dict_fits(model: nn.Module, sd: Mapping, strict: bool = True) -> None:
    """Raise a ``RuntimeError`` listing the missing and unexpected keys and the shape mismatches when ``sd`` does not
    fit ``model`` (another architecture or configuration)."""
    own = model.state_dict()
    mismatched = [f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(own[k].shape)}"
                  for k, v in sd.items() if k in own and own[k].shape != v.shape]
    missing = [k for k in own if k not in sd]
    unexpected = [k for k in sd if k not in own]
    if mismatched or (strict and (missing or unexpected)):
        lines = [f"checkpoint does not fit {type(model).__name__}"]
        for title, keys in (('shape mismatch', mismatched), ('missing keys', missing),
                            ('unexpected keys', unexpected)):
            if keys:
                shown = ', '.join(keys[:20]) + (f", ... ({len(keys) - 20} more)" if len(keys) > 20 else '')
                lines.append(f"  {title} ({len(keys)}): {shown}")
        lines.append("  check the model name and its configuration (embed_dim, depth, num_classes, ...)")
        raise RuntimeError('\n'.join(lines))
