"""Training checkpoints (exact resume) and exported weights (safetensors + config.json, timm's hub format).

Every file is written atomically: to a temporary file in the same folder, flushed to disk, then renamed over the
target with ``os.replace``, so a crash (or a NaN stop) never leaves a half-written or missing checkpoint behind.

A training checkpoint (``checkpoints/last.pt``) holds the model, optimizer, scheduler, EMA and grad-scaler states, the
random number generator states of every process (python, numpy, torch, CUDA), the epoch and the optimizer step, and
the composed config. It is read back with ``weights_only=True``: only tensors and plain containers.
"""
import json
import os
import random
import re
import tempfile
from pathlib import Path
from typing import Callable, Optional, Union

import numpy as np
import torch
import torch.nn as nn

__all__ = ['CheckpointError', 'atomic_write', 'capture_rng_state', 'restore_rng_state', 'save_training_state',
           'load_training_state', 'export_model', 'load_exported', 'TRAIN_STATE_FORMAT']

TRAIN_STATE_FORMAT = 'snnzoo-train-state-v1'
WEIGHTS_NAME = 'model.safetensors'
CONFIG_NAME = 'config.json'


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used: missing, truncated, corrupt, or of another kind."""


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path: Union[str, os.PathLike], write: Callable, binary: bool = True) -> Path:
    """Write ``path`` through ``write(file)`` into a temporary sibling, fsync it, then ``os.replace`` it into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f'.{path.name}.', suffix='.tmp')
    try:
        os.chmod(tmp, 0o666 & ~_umask())
        with os.fdopen(fd, 'wb' if binary else 'w') as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    try:  # make the rename itself durable
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError:
        pass
    return path


def capture_rng_state() -> dict:
    """This process's python, numpy, torch and CUDA generator states, as tensors and plain containers."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        'python': random.getstate(),
        'numpy': {'kind': kind, 'keys': torch.from_numpy(keys.astype(np.int64)), 'pos': int(pos),
                  'has_gauss': int(has_gauss), 'cached_gaussian': float(cached)},
        'torch': torch.get_rng_state(),
        'cuda': torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def restore_rng_state(state: dict) -> None:
    version, internal, gauss = state['python']
    random.setstate((version, tuple(internal), gauss))
    npy = state['numpy']
    np.random.set_state((npy['kind'], npy['keys'].numpy().astype(np.uint32), npy['pos'], npy['has_gauss'],
                         npy['cached_gaussian']))
    torch.set_rng_state(state['torch'])
    if state['cuda'] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state['cuda'])


def save_training_state(path: Union[str, os.PathLike], state: dict) -> Path:
    """Atomically ``torch.save`` a training state (see :func:`load_training_state` for the keys)."""
    return atomic_write(path, lambda f: torch.save(dict(state, format=TRAIN_STATE_FORMAT), f))


def load_training_state(path: Union[str, os.PathLike]) -> dict:
    """Read a training checkpoint written by :func:`save_training_state`, failing clearly on a bad file.

    Keys: ``model``, ``optimizer``, ``scheduler``, ``ema`` (or None), ``scaler`` (or None), ``rng`` (one entry per
    process), ``epoch``, ``global_step``, ``config`` (YAML text), ``metrics``.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"training checkpoint {str(path)!r} does not exist")
    size = path.stat().st_size
    try:
        state = torch.load(path, map_location='cpu', weights_only=True)
    except (RuntimeError, EOFError, OSError, ValueError) as e:
        raise CheckpointError(
            f"training checkpoint {str(path)!r} ({size} bytes) is truncated or corrupt and cannot be read ({e}). "
            f"Resume from another checkpoint, or start again without ckpt_path") from e
    except Exception as e:  # pickle.UnpicklingError: not a plain-data file
        raise CheckpointError(f"{str(path)!r} is not an snnzoo training checkpoint (it holds objects other than "
                              f"tensors and plain containers: {e})") from e
    if not isinstance(state, dict) or state.get('format') != TRAIN_STATE_FORMAT:
        found = state.get('format') if isinstance(state, dict) else type(state).__name__
        raise CheckpointError(
            f"{str(path)!r} is not an snnzoo training checkpoint (format {found!r}, expected "
            f"{TRAIN_STATE_FORMAT!r}). To start from weights only, use model.checkpoint=<file> instead of ckpt_path")
    return state


def export_model(model: nn.Module, out_dir: Union[str, os.PathLike], model_cfg: Optional[dict] = None,
                 extra: Optional[dict] = None, data_config: Optional[dict] = None) -> Path:
    """Write ``model.safetensors`` and ``config.json`` (timm's hub format) into ``out_dir``; returns the weights path.

    For a registered model, config.json is timm's (``architecture``, ``num_classes``, ``model_args``,
    ``pretrained_cfg``): ``snnzoo.create_model(architecture, **model_args)`` rebuilds the model, as
    :func:`load_exported` does. ``model_cfg`` (the training config's ``model`` group) is kept under ``snnzoo.model``;
    ``extra`` (data config, metrics, command) is added under ``snnzoo`` too. ``data_config`` (timm's: ``input_size``,
    ``mean``, ``std``, ...) describes the preprocessing of the training data in ``pretrained_cfg``.
    """
    from safetensors.torch import save
    from timm.models._hub import save_config_for_hf

    out_dir = Path(out_dir)
    tensors = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    weights = atomic_write(out_dir / WEIGHTS_NAME, lambda f: f.write(save(tensors)))
    snn = dict(extra or {}, model=model_cfg or {})
    if getattr(model, 'pretrained_cfg', None):
        fd, tmp = tempfile.mkstemp(dir=out_dir, prefix='.config.', suffix='.json')
        os.close(fd)
        try:
            save_config_for_hf(model, tmp, data_config=data_config)
            config = json.loads(Path(tmp).read_text())
        finally:
            os.unlink(tmp)
    else:
        config = {'architecture': None, 'num_classes': getattr(model, 'num_classes', None)}
    config['snnzoo'] = snn
    atomic_write(out_dir / CONFIG_NAME, lambda f: json.dump(config, f, indent=2, default=str), binary=False)
    return weights


def load_exported(path: Union[str, os.PathLike], **model_overrides) -> tuple:
    """Rebuild a model exported by :func:`export_model` from its folder (or its .safetensors file), or a published
    weight of ``checkpoints/`` (``<arch>.<tag>-<sha256>.safetensors`` beside ``<arch>.<tag>.config.json``).

    Returns ``(model, config)``; ``model_overrides`` (e.g. ``backend='torch'``) go to the constructor.
    """
    import hydra.utils
    from safetensors import SafetensorError

    import snnzoo

    path = Path(path)
    folder = path if path.is_dir() else path.parent
    weights = path if path.is_file() else folder / WEIGHTS_NAME
    config_path = folder / CONFIG_NAME
    published = re.match(r'(.+)-[0-9a-f]{8,64}\.safetensors$', path.name)
    if path.is_file() and published:  # a published weight: <arch>.<tag>-<sha256>.safetensors + <arch>.<tag>.config.json
        config_path = folder / f"{published.group(1)}.config.json"
    for p, what in ((weights, 'weights'), (config_path, 'config')):
        if not p.is_file():
            raise CheckpointError(f"no {what} file {str(p)!r}: an exported checkpoint is a folder with "
                                  f"{WEIGHTS_NAME} and {CONFIG_NAME} (written at the end of snnzoo-train)")
    try:
        config = json.loads(config_path.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{str(config_path)!r} is truncated or not JSON ({e})") from e
    model_cfg = config.get('snnzoo', {}).get('model', {})
    if config.get('architecture'):
        kwargs = dict(config.get('model_args', {}), **model_overrides)
        model = snnzoo.create_model(config['architecture'], pretrained=False, **kwargs)
    elif '_target_' in model_cfg:
        model = hydra.utils.instantiate({k: v for k, v in model_cfg.items() if k != 'checkpoint'},
                                        **model_overrides)
    else:
        raise CheckpointError(f"{str(config_path)!r} names no architecture to rebuild the model from")
    try:
        snnzoo.load_checkpoint(model, weights)
    except SafetensorError as e:
        raise CheckpointError(f"weights file {str(weights)!r} is truncated or corrupt ({e}); re-export it or "
                              f"re-run the training") from e
    return model, config
