"""Whole-network helpers for spiking modules (cf. ``spikingjelly.activation_based.functional``)."""
import torch.nn as nn

from .neuron import BaseNode, _check_backend

__all__ = ['reset_net', 'set_backend', 'set_stateful']


def reset_net(net: nn.Module) -> None:
    """Forget the streaming state of every neuron in ``net``.

    Only needed for ``stateful=True`` neurons: by default every forward starts from the initial state.
    """
    for m in net.modules():
        if isinstance(m, BaseNode):
            m.reset()


def set_backend(net: nn.Module, backend: str) -> nn.Module:
    """Run every neuron of ``net`` on ``backend`` (``'auto'``, ``'torch'`` or ``'cupy'``); returns ``net``."""
    _check_backend(backend)
    for m in net.modules():
        if isinstance(m, BaseNode):
            m.backend = backend
    return net


def set_stateful(net: nn.Module, stateful: bool = True) -> nn.Module:
    """Switch every neuron of ``net`` to streaming (``True``) or stateless (``False``) mode and reset it."""
    for m in net.modules():
        if isinstance(m, BaseNode):
            m.stateful = bool(stateful)
            m.reset()
    return net
