"""snnzoo's view of timm's model registry: every snnzoo model is a timm model; these helpers list only ours."""
import difflib
import fnmatch

import timm
from timm.models import register_model as _timm_register_model

__all__ = ['register_model', 'create_model', 'list_models', 'list_pretrained', 'is_snnzoo_model']

_MODELS: set = set()


def register_model(fn):
    """``timm.models.register_model`` that also records the name as an snnzoo model."""
    _MODELS.add(fn.__name__)
    return _timm_register_model(fn)


def is_snnzoo_model(name: str) -> bool:
    return name.split('.')[0] in _MODELS


def list_models(pattern: str = '*', pretrained: bool = False) -> list:
    """Sorted names of snnzoo's models matching the shell-style ``pattern`` (e.g. ``'qkformer*'``)."""
    if pretrained:
        return sorted(n for n in timm.list_pretrained(pattern) if is_snnzoo_model(n))
    return sorted(n for n in _MODELS if fnmatch.fnmatch(n, pattern))


def list_pretrained(pattern: str = '*') -> list:
    """Names (``model.tag``) of snnzoo's models that have published weights."""
    return list_models(pattern, pretrained=True)


def create_model(model_name: str, pretrained: bool = False, **kwargs):
    """Build a registered snnzoo model, exactly like ``timm.create_model`` (which works too after ``import snnzoo``).

    Keyword overrides such as ``num_classes``, ``T``, ``img_size``, ``in_chans``, ``backend``, ``embed_dim``,
    ``depth``, ``num_heads``, ``mlp_ratio`` or ``layers`` go to the family's constructor.
    """
    if not is_snnzoo_model(model_name):
        close = difflib.get_close_matches(model_name.split('.')[0], sorted(_MODELS), n=5, cutoff=0.5)
        hint = f"; did you mean {', '.join(close)}?" if close else "; snnzoo.list_models() lists them all"
        raise ValueError(f"unknown snnzoo model {model_name!r}{hint}")
    return timm.create_model(model_name, pretrained=pretrained, **kwargs)
