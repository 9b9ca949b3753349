"""Spiking layers: neurons, surrogate gradients, multi-step helpers and the blocks the model families share."""
from .functional import reset_net, set_backend, set_stateful
from .neuron import BACKENDS, BaseNode, IFNode, LIFNode, NeuronConfig, ParametricLIFNode, neuron_multistep
from .saved_spikes import recompute_saved_spikes
from .grad_modes import GRAD_MODES, forward_backward, get_grad_mode, set_grad_mode
from .surrogate import SURROGATES, spike_fn, surrogate_grad
from .temporal import MultiStep, channels_last_frames, to_time_major
from .attention import SpikingSelfAttention
from .drop import DropPath
from .mlp import SpikingMlp
from .patch_embed import SpikingConvStage, SpikingPatchSplitting, SpikingTokenizer
from .projection import apply_projection, create_projection
from .qk_attention import ChannelQKAttention, TokenQKAttention
from .residual import MSBasicBlock, SEWBasicBlock, SEWBottleneck, sew_connect
from .sdsa import SpikeDrivenSelfAttention
from .qcfs import QCFS

__all__ = ['reset_net', 'set_backend', 'set_stateful', 'GRAD_MODES', 'forward_backward', 'get_grad_mode',
           'set_grad_mode', 'BACKENDS', 'BaseNode', 'IFNode', 'LIFNode', 'NeuronConfig',
           'ParametricLIFNode', 'neuron_multistep', 'recompute_saved_spikes', 'SURROGATES', 'spike_fn',
           'surrogate_grad', 'MultiStep', 'channels_last_frames', 'to_time_major', 'SpikingSelfAttention',
           'DropPath', 'SpikingMlp', 'SpikingConvStage', 'SpikingPatchSplitting', 'SpikingTokenizer',
           'apply_projection', 'create_projection', 'ChannelQKAttention', 'TokenQKAttention', 'MSBasicBlock',
           'SEWBasicBlock', 'SEWBottleneck', 'sew_connect', 'SpikeDrivenSelfAttention', 'QCFS']
