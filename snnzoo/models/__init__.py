"""The model zoo: one module per family; importing this package registers every model with timm."""
from ._checkpoint import load_checkpoint, read_state_dict
from ._registry import create_model, is_snnzoo_model, list_models, list_pretrained, register_model
