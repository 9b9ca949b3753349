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

# timm's FX tracer (features_only=True with feature_cls='fx', torchvision's feature extraction): the neurons (a loop
# over T) and the layers that read their input's shape in Python are leaves of the graph.
from timm.layers import register_notrace_module  # noqa: E402

from ..layers import (MultiStep, SpikeDrivenSelfAttention, SpikingConvStage, SpikingMlp,  # noqa: E402
                      SpikingPatchSplitting, SpikingSelfAttention, SpikingTokenizer)
from ..layers.hierarchical_patch_embed import SpikingConvStem, SpikingDownsample  # noqa: E402
from ..layers.metaformer_blocks import ConvBNDownsample, SpikeDrivenSelfAttentionV2, SpikingConvBlock  # noqa: E402
from ..layers.neuron import BaseNode  # noqa: E402
from ..layers.qk_attention import ChannelQKAttention, TokenQKAttention  # noqa: E402
from .sdt import SDTMlp, SDTPatchEmbed  # noqa: E402

for _leaf in (BaseNode, MultiStep, SpikingConvStage, SpikingPatchSplitting, SpikingTokenizer, SpikingSelfAttention,
              SpikingMlp, SpikeDrivenSelfAttention, SDTPatchEmbed, SDTMlp, SpikingConvStem, SpikingDownsample,
              TokenQKAttention, ChannelQKAttention, ConvBNDownsample, SpikingConvBlock, SpikeDrivenSelfAttentionV2):
    register_notrace_module(_leaf)
