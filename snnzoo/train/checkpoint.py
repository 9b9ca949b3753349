"""Training checkpoints (exact resume) and exported weights (safetensors + config.json, timm's hub format).

Every file is written atomically: to a temporary file in the same folder, flushed to disk, then renamed over the
target with ``os.replace``, so a crash (or a NaN stop) never leaves a half-written or missing checkpoint behind; the
temporary files of a killed run are removed when the next run starts (:func:`snnzoo._files.remove_stale_temporaries`).

A stored config is data, never code (SPEC section 10): :func:`load_trained_model` rebuilds a run's model from a
registered name and keyword values checked against the family's constructor, and its test data set from snnzoo's own
data builders; any other ``_target_`` is refused unless the user passes ``trust_config=true`` on the command line.

A training checkpoint (``checkpoints/last.pt``) holds the model, optimizer, scheduler, EMA and grad-scaler states, the
random number generator states of every process (python, numpy, torch, CUDA), the epoch and the optimizer step, and
the composed config. It is read back with ``weights_only=True``: only tensors and plain containers.
"""
import difflib
import inspect
import json
import os
import random
import re
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Union

import numpy as np
import torch
import torch.nn as nn

from .._files import atomic_write, is_disk_full, remove_stale_temporaries

__all__ = ['CheckpointError', 'ConfigRefusedError', 'TrainedModel', 'atomic_write', 'remove_stale_temporaries',
           'capture_rng_state', 'restore_rng_state', 'save_training_state', 'load_training_state', 'export_model',
           'load_exported', 'load_trained_model', 'build_registered_model', 'TRAIN_STATE_FORMAT']

TRAIN_STATE_FORMAT = 'snnzoo-train-state-v1'
WEIGHTS_NAME = 'model.safetensors'
CONFIG_NAME = 'config.json'


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used: missing, truncated, corrupt, or of another kind."""


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
    """Atomically ``torch.save`` a training state (see :func:`load_training_state` for the keys); on a full disk a
    :class:`CheckpointError` says so and names the previous checkpoint, which stays intact."""
    path = Path(path)
    try:
        return atomic_write(path, lambda f: torch.save(dict(state, format=TRAIN_STATE_FORMAT), f))
    except (OSError, RuntimeError) as e:
        if not is_disk_full(e):
            raise
        kept = (f"the last good checkpoint {path} is intact: resume from it with ckpt_path={path}"
                if path.is_file() else "no earlier checkpoint exists in that folder")
        raise CheckpointError(f"no space left on the device while saving the checkpoint {path} "
                              f"(step {state.get('global_step')}); {kept}. Free some disk space (or set "
                              f"paths.output_dir to another disk) and resume") from e


def load_training_state(path: Union[str, os.PathLike]) -> dict:
    """Read a training checkpoint written by :func:`save_training_state`, failing clearly on a bad file.

    Keys: ``model``, ``optimizer``, ``scheduler``, ``ema`` (or None), ``scaler`` (or None), ``rng`` (one entry per
    process), ``epoch``, ``global_step``, ``config`` (YAML text), ``metrics``.
    """
    path = Path(path)
    if path.is_dir():
        inside = next((p for p in (path / 'checkpoints' / 'last.pt', path / 'last.pt') if p.is_file()), None)
        raise CheckpointError(f"training checkpoint {str(path)!r} is a folder, not a file: "
                              + (f"use ckpt_path={inside}" if inside else "give the last.pt inside a run's "
                                 "checkpoints/ folder"))
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
        fd, tmp = tempfile.mkstemp(dir=out_dir, prefix=f'.{CONFIG_NAME}.', suffix='.tmp')
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


def load_exported(path: Union[str, os.PathLike], trust_config: bool = False, **model_overrides) -> tuple:
    """``(model, config)`` of an exported folder or published weight: :func:`load_trained_model`'s model and config."""
    trained = load_trained_model(path, trust_config=trust_config, **model_overrides)
    return trained.model, trained.config


# --- rebuilding a trained model from what a file says: data, never code ---------------------------------------------

TRUST_HINT = ("if you wrote this checkpoint yourself and trust it, opt in on the command line with trust_config=true "
              "(snnzoo-eval checkpoint=<path> trust_config=true; in python load_trained_model(path, "
              "trust_config=True)), which builds the listed _target_ objects; otherwise rebuild the model by name: "
              "snnzoo.create_model(<registered name>) and snnzoo.load_checkpoint(model, <weights file>)")
# The only callables a stored data config may name: snnzoo's own data builders, looked up here by their exact
# string (the string is a key of this table, nothing is imported from it).
_DATA_BUILDERS = ('snnzoo.data.build_dataset', 'snnzoo.data.build_transforms', 'snnzoo.data.build_event_transforms')
# The data set options (build_dataset's **opts) a stored config may set; not download / cache_dir, which write files.
_DATASET_OPTS = ('test_size', 'seed', 'img_size', 'T', 'split_by', 'cache', 'prepare', 'progress', 'split_protocol',
                 'train_ratio', 'label_order')
_PLAIN = (bool, int, float, str, type(None))


class ConfigRefusedError(CheckpointError):
    """A stored config asks to build objects (``_target_``) that snnzoo will not build without ``trust_config``."""


@dataclass
class TrainedModel:
    """What :func:`load_trained_model` rebuilt: the model (weights loaded, eval mode), the stored config (plain
    data), the checked description of its test data set (``None`` when none is recorded) and the weights' file."""
    model: nn.Module
    config: dict
    data: Optional[dict]
    weights: Path
    trusted: bool = False

    def build_test_set(self):
        """The recorded test data set, built by snnzoo's registered data builders only (by Hydra when trusted)."""
        if self.data is None:
            raise CheckpointError(f"{self.weights} records no data set; choose one on the command line, "
                                  f"e.g. data=digits")
        if self.trusted:
            import hydra.utils
            return hydra.utils.instantiate(self.data, _convert_='all')
        return _build_data(self.data)


def _targets(obj, where: str = '') -> list:
    """Every ``(key path, _target_ value)`` at any depth of a config."""
    found = []
    if isinstance(obj, dict):
        for k, v in obj.items():
            key = f"{where}.{k}" if where else str(k)
            if k == '_target_':
                found.append((key, v))
            found += _targets(v, key)
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            found += _targets(v, f"{where}[{i}]")
    return found


def _refuse(source: Path, targets: list) -> ConfigRefusedError:
    shown = ', '.join(f"{k}={v!r}" for k, v in targets[:5])
    return ConfigRefusedError(f"{source}: the stored config was refused: it asks to build {shown}, and snnzoo never "
                              f"builds, imports, evaluates or unpickles anything named by a file (a stored config is "
                              f"data, not code). To go on, {TRUST_HINT}")


def _check_plain(value, source: Path, where: str) -> None:
    """A keyword value read from a file: a plain JSON scalar or a (nested) list of them."""
    if isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            _check_plain(v, source, f"{where}[{i}]")
    elif not isinstance(value, _PLAIN):
        raise CheckpointError(f"{source}: {where} holds a {type(value).__name__} ({value!r:.80}); a stored "
                              f"keyword value must be a number, string, boolean, null or a list of them")


def _signature_keys(fns) -> set:
    return {name for fn in fns for name, p in inspect.signature(fn).parameters.items()
            if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and name != 'self'}


def _model_classes(name: str) -> list:
    """The model classes of the family that registers ``name`` (those with timm's ``forward_head``)."""
    from timm.models import model_entrypoint
    module = sys.modules[model_entrypoint(name).__module__]
    return [c for c in vars(module).values() if isinstance(c, type) and issubclass(c, nn.Module)
            and c.__module__ == module.__name__ and hasattr(c, 'forward_head')]


def build_registered_model(name, kwargs, source: Path, where: str = 'model', **overrides) -> nn.Module:
    """``snnzoo.create_model(name, **kwargs)`` for a name and keyword values read from ``source``, after checking
    that the name is registered, every keyword is a parameter of the family's constructor and every value plain."""
    from snnzoo.models import create_model, is_snnzoo_model, list_models
    if not isinstance(name, str) or not is_snnzoo_model(name):
        close = difflib.get_close_matches(str(name), list_models(), n=3)
        raise CheckpointError(f"{source}: {where} names {name!r}, which is not a registered snnzoo model"
                              + (f" (did you mean {', '.join(close)}?)" if close else '')
                              + "; snnzoo.list_models() lists them")
    kwargs = dict(kwargs or {})
    classes = _model_classes(name)
    allowed = _signature_keys(c.__init__ for c in classes)
    for key, value in kwargs.items():
        if key not in allowed:
            raise CheckpointError(f"{source}: {where} keyword {key!r} is not a parameter of "
                                  f"{'/'.join(c.__name__ for c in classes)} (its parameters: "
                                  f"{', '.join(sorted(allowed))}); remove it from the stored config")
        _check_plain(value, source, f"{where}.{key}")
    return create_model(name, pretrained=False, **dict(kwargs, **overrides))


def _data_builder(target: str):
    import snnzoo.data
    return getattr(snnzoo.data, target.rsplit('.', 1)[1])


def _check_data(node: dict, source: Path, where: str) -> dict:
    """A stored data-set entry (``_target_`` one of :data:`_DATA_BUILDERS`, plain keyword values, a nested
    transform of the same kind), checked against the builder's signature; returns it as a plain dict."""
    target = node.get('_target_')
    if target not in _DATA_BUILDERS:
        raise _refuse(source, [(f"{where}._target_", target)])
    fn = _data_builder(target)
    params = inspect.signature(fn).parameters
    takes_any = any(p.kind is p.VAR_KEYWORD for p in params.values())
    out = {'_target_': target}
    for key, value in node.items():
        if key == '_target_':
            continue
        if str(key).startswith('_'):  # Hydra's _args_ / _partial_ / _convert_ ...: instructions, not data
            raise _refuse(source, [(f"{where}.{key}", node[key])])
        if key not in params and not (takes_any and (target != _DATA_BUILDERS[0] or key in _DATASET_OPTS)):
            raise CheckpointError(f"{source}: {where}.{key} is not a parameter of {target}; remove it from the "
                                  f"stored config or choose the data on the command line (data=<name>)")
        if isinstance(value, dict):
            out[key] = _check_data(value, source, f"{where}.{key}")
        else:
            _check_plain(value, source, f"{where}.{key}")
            out[key] = value
    if target == 'snnzoo.data.build_dataset':
        from snnzoo.data import dataset_info
        try:
            dataset_info(str(out.get('name')))
        except ValueError as e:
            raise CheckpointError(f"{source}: {where}.name: {e}") from e
    return out


def _build_data(node: dict):
    kwargs = {k: _build_data(v) if isinstance(v, dict) else v for k, v in node.items() if k != '_target_'}
    return _data_builder(node['_target_'])(**kwargs)


def _announce(source: Path, targets: list) -> None:
    lines = '\n'.join(f"  {k} = {v}" for k, v in targets)
    print(f"trust_config=true: building the objects that {source} names:\n{lines}", file=sys.stderr, flush=True)


def _locate(path: Path) -> tuple:
    """``(kind, file)``: ``('state', last.pt)`` or ``('exported', weights .safetensors)`` for a checkpoint path."""
    if path.is_dir():
        if (path / WEIGHTS_NAME).is_file():
            return 'exported', path / WEIGHTS_NAME
        for candidate in (path / 'checkpoints' / 'last.pt', path / 'last.pt'):
            if candidate.is_file():
                return 'state', candidate
        held = ', '.join(sorted(p.name for p in path.iterdir())[:10]) or 'nothing'
        raise CheckpointError(f"{str(path)!r} is a folder without a checkpoint in it (it holds {held}): give a run "
                              f"folder (with {WEIGHTS_NAME} + {CONFIG_NAME}, or checkpoints/last.pt), its "
                              f"checkpoints/last.pt, or a {WEIGHTS_NAME} file")
    if not path.exists():
        raise CheckpointError(f"checkpoint {str(path)!r} does not exist: give a run folder, its checkpoints/last.pt, "
                              f"an exported folder ({WEIGHTS_NAME} + {CONFIG_NAME}) or a published .safetensors file")
    if path.suffix == '.safetensors':
        return 'exported', path
    if path.suffix in ('.pt', '.pth', '.tar'):
        return 'state', path
    raise CheckpointError(f"{str(path)!r} is neither a training checkpoint (.pt) nor exported weights "
                          f"(.safetensors); for an original repository's .pth use snnzoo.load_checkpoint")


def _exported_config_path(weights: Path) -> Path:
    published = re.match(r'(.+)-[0-9a-f]{8,64}\.safetensors$', weights.name)
    return weights.parent / (f"{published.group(1)}.config.json" if published else CONFIG_NAME)


def _read_exported_weights(weights: Path) -> dict:
    """The tensors of ``weights``, loaded from the very bytes whose sha256 was checked when the name carries one."""
    from safetensors import SafetensorError
    from safetensors.torch import load

    from snnzoo.models._builder import read_verified
    data = read_verified(weights, required=False)
    try:
        return load(data)
    except SafetensorError as e:
        raise CheckpointError(f"weights file {str(weights)!r} ({len(data)} bytes) is truncated or corrupt ({e}); "
                              f"re-export it or re-run the training") from e


def load_trained_model(path: Union[str, os.PathLike], trust_config: bool = False, use_ema: bool = True,
                       **model_overrides) -> TrainedModel:
    """Rebuild a trained model from a run folder, its ``checkpoints/last.pt``, an exported folder
    (``model.safetensors`` + ``config.json``) or a published ``<arch>.<tag>-<sha256>.safetensors``.

    The stored config is plain data: the model is ``snnzoo.create_model(<registered name>, **kwargs)`` with every
    keyword checked against the family's constructor and every value a JSON scalar or a list of them; the test data
    set is described only through snnzoo's registered data builders. A ``_target_`` anywhere else (a custom model,
    a transform of another package) raises :class:`ConfigRefusedError` unless ``trust_config=True``, which prints
    what it will build and hands the config to Hydra. ``use_ema``: a ``last.pt``'s EMA weights when it has them.
    ``model_overrides`` (e.g. ``backend='torch'``) go to the constructor.
    """
    import yaml

    from snnzoo.models._checkpoint import load_checkpoint
    source = Path(path)
    kind, file = _locate(source)
    if kind == 'state':
        state = load_training_state(file)
        if not isinstance(state.get('config'), str):
            raise CheckpointError(f"{file} records no training config; rebuild the model by name and load its "
                                  f"weights with snnzoo.load_checkpoint(model, {str(file)!r})")
        try:
            config = yaml.safe_load(state['config'])
        except yaml.YAMLError as e:
            raise CheckpointError(f"{file}: its stored config is not valid YAML ({e})") from e
        if not isinstance(config, dict):
            raise CheckpointError(f"{file}: its stored config is not a mapping")
        model_cfg, data_cfg, config_file = config.get('model') or {}, config.get('data'), file
        weights = state['ema'] if use_ema and state.get('ema') is not None else state['model']
        weights = {k[len('module.'):] if k.startswith('module.') else k: v for k, v in weights.items()}
    else:
        config_file = _exported_config_path(file)
        if not config_file.is_file():
            raise CheckpointError(f"no config file {str(config_file)!r} beside {str(file)!r}: an exported checkpoint "
                                  f"is a folder with {WEIGHTS_NAME} and {CONFIG_NAME} (written at the end of "
                                  f"snnzoo-train)")
        try:
            config = json.loads(config_file.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise CheckpointError(f"{str(config_file)!r} is truncated or not JSON ({e}); re-export the model") from e
        if not isinstance(config, dict):
            raise CheckpointError(f"{str(config_file)!r} is not a JSON object; re-export the model")
        stored = config.get('snnzoo') if isinstance(config.get('snnzoo'), dict) else {}
        if config.get('architecture'):
            model_cfg = {'name': config['architecture'], 'kwargs': config.get('model_args') or {}}
        else:
            model_cfg = stored.get('model') or {}
        data_cfg = stored.get('data')
        weights = _read_exported_weights(file)
    if not isinstance(model_cfg, dict) or not isinstance(data_cfg, (dict, type(None))):
        raise CheckpointError(f"{config_file}: its model / data entries are not mappings; re-export the model")

    test_cfg = (data_cfg or {}).get('test')
    targets = _targets(model_cfg, 'model')
    targets += [(k, v) for k, v in _targets(test_cfg, 'data.test') if v not in _DATA_BUILDERS]
    if targets and not trust_config:
        raise _refuse(config_file, targets)
    if targets:
        import hydra.utils
        _announce(config_file, targets)
    if '_target_' in model_cfg:
        model = hydra.utils.instantiate({k: v for k, v in model_cfg.items() if k != 'checkpoint'},
                                        **model_overrides)
    elif model_cfg.get('name'):
        if not isinstance(model_cfg.get('kwargs') or {}, dict):
            raise CheckpointError(f"{config_file}: model.kwargs is not a mapping")
        model = build_registered_model(model_cfg['name'], model_cfg.get('kwargs'), config_file, **model_overrides)
    else:
        raise CheckpointError(f"{config_file} names no model to rebuild (no architecture / model.name)")
    try:
        load_checkpoint(model, weights)
    except RuntimeError as e:
        raise CheckpointError(f"the weights of {file} do not fit the model its config describes: {e}") from e
    data = None
    if isinstance(test_cfg, dict):
        data = test_cfg if targets else _check_data(test_cfg, config_file, 'data.test')
    return TrainedModel(model.eval(), config, data, file, trusted=bool(targets))
