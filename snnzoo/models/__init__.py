"""The model zoo: one module per family; importing this package registers every model with timm."""
from ._checkpoint import load_checkpoint, read_state_dict
from ._registry import create_model, is_snnzoo_model, list_models, list_pretrained, register_model
from . import meta_spikeformer  # noqa: E402,F401
from . import ms_resnet  # noqa: E402,F401
from . import qcfs_resnet  # noqa: E402,F401
from . import qkformer  # noqa: E402,F401
from . import sdt  # noqa: E402,F401
from . import sew_resnet  # noqa: E402,F401
from . import spikformer, spikingformer  # noqa: E402,F401

__all__ = ['load_checkpoint', 'read_state_dict', 'create_model', 'is_snnzoo_model', 'list_models', 'list_pretrained',
           'register_model']
