"""Spiking layers: neurons, surrogate gradients, multi-step helpers and the blocks the model families share."""
from .functional import reset_net, set_backend, set_stateful
from .neuron import BACKENDS, BaseNode, IFNode, LIFNode, NeuronConfig, ParametricLIFNode, neuron_multistep
from .surrogate import SURROGATES, spike_fn, surrogate_grad
from .temporal import MultiStep, to_time_major
