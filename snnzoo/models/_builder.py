"""Building registered models and loading their published weights with hash checks.

A published weight is a safetensors file named ``<model>.<tag>-<sha256 prefix>.safetensors`` (torch.hub's
convention: at least 8 hex digits of the file's sha256 after the last ``-``) with a timm-hub ``config.json`` beside it.
A model's ``pretrained_cfg`` names it in ``file`` and may add ``url`` or ``hf_hub_id``. ``pretrained=True`` looks for
the file, in order, in ``$SNNZOO_WEIGHTS``, the checkout's ``checkpoints/`` folder, and the cache (``$SNNZOO_CACHE``,
default ``~/.cache/snnzoo``); else downloads it from ``url`` or the Hugging Face hub into the cache (to a temporary
name, verified, then renamed). A file whose sha256 does not match its name is refused, and removed if it is in the
cache.
"""
import hashlib
import os
import re
import tempfile
from contextlib import nullcontext
from pathlib import Path
from typing import Callable, Optional

import torch
import torch.nn as nn
from timm.models import build_model_with_cfg, resolve_pretrained_cfg

from .._files import remove_stale_temporaries

__all__ = ['build_snn_model', 'resolve_pretrained', 'load_pretrained_state_dict', 'read_verified', 'verify_sha256',
           'sha256_of', 'weights_search_path']

_HASH = re.compile(r'-([a-f0-9]{8,64})\.safetensors$')
REPO_CHECKPOINTS = Path(__file__).resolve().parents[2] / 'checkpoints'


def cache_dir() -> Path:
    return Path(os.environ.get('SNNZOO_CACHE', Path.home() / '.cache' / 'snnzoo'))


def weights_search_path() -> list:
    dirs = [Path(os.environ['SNNZOO_WEIGHTS'])] if os.environ.get('SNNZOO_WEIGHTS') else []
    return dirs + [REPO_CHECKPOINTS, cache_dir()]


def sha256_of(path) -> str:
    h = hashlib.sha256()
    with open(path, 'rb') as f:
        for block in iter(lambda: f.read(1 << 20), b''):
            h.update(block)
    return h.hexdigest()


def _expected_prefix(path: Path, required: bool = True) -> Optional[str]:
    m = _HASH.search(path.name)
    if m is None and required:
        raise ValueError(f"weight file {path.name!r} carries no sha256 prefix "
                         f"('<name>-<at least 8 hex digits>.safetensors'); refusing to load unverified weights")
    return m.group(1) if m else None


def read_verified(path, expected_prefix: Optional[str] = None, required: bool = True,
                  remove_on_mismatch: bool = False) -> bytes:
    """The file's bytes, read once, after checking that their sha256 starts with the prefix in its name (or
    ``expected_prefix``): load these bytes (``safetensors.torch.load``), not the file again, so that what is loaded is
    exactly what was hashed. ``required=False`` returns a file whose name carries no hash unchecked."""
    path = Path(path)
    expected_prefix = expected_prefix or _expected_prefix(path, required)
    data = path.read_bytes()
    if expected_prefix is not None:
        _check_digest(path, hashlib.sha256(data).hexdigest(), expected_prefix, remove_on_mismatch)
    return data


def verify_sha256(path, expected_prefix: Optional[str] = None, remove_on_mismatch: bool = False) -> str:
    """Check that the file's sha256 starts with the prefix in its name (or ``expected_prefix``); returns the digest."""
    path = Path(path)
    expected_prefix = expected_prefix or _expected_prefix(path)
    digest = sha256_of(path)
    _check_digest(path, digest, expected_prefix, remove_on_mismatch)
    return digest


def _check_digest(path: Path, digest: str, expected_prefix: str, remove_on_mismatch: bool) -> None:
    if not digest.startswith(expected_prefix):
        if remove_on_mismatch:
            path.unlink(missing_ok=True)
        raise RuntimeError(f"sha256 mismatch for {path}: expected {expected_prefix}..., got {digest}; the file is "
                           f"corrupt or not the published weight" + (" and was removed from the cache; retry to "
                                                                    "download it again" if remove_on_mismatch else ""))


def _download(url: str, dest: Path) -> None:
    from urllib.request import urlopen
    m = _HASH.search(dest.name)
    if m is None:
        raise ValueError(f"weight file {dest.name!r} carries no sha256 prefix; refusing to download unverified weights")
    dest.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(dest.parent)  # the partial downloads of killed processes
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=dest.name + '.', suffix='.part')
    try:
        with os.fdopen(fd, 'wb') as f, urlopen(url, timeout=60) as r:
            for block in iter(lambda: r.read(1 << 20), b''):
                f.write(block)
        verify_sha256(tmp, m.group(1), remove_on_mismatch=True)
        os.replace(tmp, dest)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def resolve_pretrained(pretrained_cfg: dict, model_name: str = 'model') -> Path:
    """Local, verified path of the weight file that ``pretrained_cfg`` names (see the module docstring)."""
    name = pretrained_cfg.get('file')
    if not name:
        raise RuntimeError(f"{model_name} has no published weights; snnzoo.list_pretrained() lists those that do")
    if os.path.isabs(name) and os.path.isfile(name):
        verify_sha256(name)
        return Path(name)
    name = Path(name).name
    for folder in weights_search_path():
        candidate = folder / name
        if candidate.is_file():
            verify_sha256(candidate, remove_on_mismatch=folder == cache_dir())
            return candidate
    dest = cache_dir() / name
    if pretrained_cfg.get('url'):
        try:
            _download(pretrained_cfg['url'], dest)
            return dest
        except OSError as e:
            reason = f"downloading {pretrained_cfg['url']} failed ({e})"
    elif pretrained_cfg.get('hf_hub_id'):
        try:
            from huggingface_hub import hf_hub_download
            path = Path(hf_hub_download(pretrained_cfg['hf_hub_id'], name, cache_dir=str(cache_dir() / 'hub')))
        except Exception as e:  # offline, missing repo, ... : explain where to put the file
            reason = f"fetching {name} from the Hugging Face hub {pretrained_cfg['hf_hub_id']!r} failed ({e})"
        else:
            verify_sha256(path, remove_on_mismatch=True)
            return path
    else:
        reason = 'it has no download location'
    raise FileNotFoundError(f"pretrained weights for {model_name} not found: {reason}. Put {name} into one of "
                            f"{[str(d) for d in weights_search_path()]} (or set SNNZOO_WEIGHTS to its folder)")


def load_pretrained_state_dict(pretrained_cfg: dict, model_name: str = 'model') -> dict:
    """The tensors of the weight file ``pretrained_cfg`` names, loaded from the very bytes whose sha256 was checked."""
    from safetensors import SafetensorError
    from safetensors.torch import load
    path = resolve_pretrained(pretrained_cfg, model_name)
    data = read_verified(path, remove_on_mismatch=path.parent == cache_dir())
    try:
        return load(data)
    except SafetensorError as e:
        raise RuntimeError(f"weight file {str(path)!r} ({len(data)} bytes) matches its sha256 but is not a valid "
                           f"safetensors file ({e}); it was published broken: report it") from e


def _on_device(model_cls: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    """``model_cls`` taking timm's ``device=`` / ``dtype=``: parameters and buffers are created on ``device`` (the meta
    device included) and floating-point ones converted to ``dtype``."""
    def build(*args, device=None, dtype=None, **kwargs) -> nn.Module:
        with torch.device(device) if device is not None else nullcontext():
            model = model_cls(*args, **kwargs)
        return model if dtype is None else model.to(dtype=dtype)
    return build


def build_snn_model(model_cls: Callable[..., nn.Module], variant: str, pretrained: bool = False,
                    pretrained_filter_fn: Optional[Callable] = None, **kwargs) -> nn.Module:
    """timm's ``build_model_with_cfg`` (``device=`` / ``dtype=``, ``features_only=True`` ...) with snnzoo's published
    weights: with ``pretrained=True`` the weight file is found, read once and its sha256 verified
    (:func:`load_pretrained_state_dict`); timm's own loader takes those tensors before any feature wrapper is built,
    adapting the first conv to another ``in_chans`` and dropping the classifier for another ``num_classes`` (0
    included)."""
    num_classes = kwargs.get('num_classes')
    if num_classes is not None and (type(num_classes) is not int or num_classes < 0):
        raise ValueError(f"{variant}: num_classes={num_classes!r} must be an integer >= 0 (0 removes the classifier: "
                         f"the model then returns its pooled features)")
    overlay = dict(kwargs.pop('pretrained_cfg_overlay', None) or {})
    if pretrained:
        cfg = resolve_pretrained_cfg(variant, pretrained_cfg=kwargs.get('pretrained_cfg'),
                                     pretrained_cfg_overlay=overlay).to_dict()
        if not cfg.get('state_dict'):  # the tensors of the very bytes that were hashed, not a path to re-read
            overlay['state_dict'] = load_pretrained_state_dict(cfg, variant)
    return build_model_with_cfg(_on_device(model_cls), variant, pretrained=pretrained,
                                pretrained_filter_fn=pretrained_filter_fn, pretrained_cfg_overlay=overlay, **kwargs)


def save_pretrained(model: nn.Module, out_dir, tag: str, model_args: Optional[dict] = None) -> Path:
    """Write ``model`` as ``<model>.<tag>-<sha256[:16]>.safetensors`` + ``.config.json`` (timm hub fields); returns the
    weight path. Written to temporary names and renamed, so an interrupted save leaves nothing half-written."""
    import json

    from safetensors.torch import save_file
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    arch = model.pretrained_cfg.get('architecture') or type(model).__name__.lower()
    fd, tmp = tempfile.mkstemp(dir=out_dir, suffix='.safetensors.part')
    os.close(fd)
    try:
        state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
        save_file(state, tmp, metadata={'format': 'pt', 'architecture': arch})
        digest = sha256_of(tmp)
        os.chmod(tmp, 0o644)  # mkstemp's 0600 would keep a published weight from other users
        path = out_dir / f"{arch}.{tag}-{digest[:16]}.safetensors"
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    cfg = {k: v for k, v in model.pretrained_cfg.items()
           if k in ('input_size', 'mean', 'std', 'crop_pct', 'interpolation', 'first_conv', 'classifier', 'license')}
    config = dict(architecture=arch, num_classes=getattr(model, 'num_classes', None),
                  num_features=getattr(model, 'num_features', None), model_args=model_args or {},
                  pretrained_cfg=dict(cfg, tag=tag, file=path.name), sha256=digest)
    config_path = out_dir / f"{arch}.{tag}.config.json"
    tmp_cfg = config_path.with_suffix('.json.part')
    tmp_cfg.write_text(json.dumps(config, indent=2, default=list) + '\n')
    os.replace(tmp_cfg, config_path)
    return path
