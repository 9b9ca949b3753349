"""QCFS ResNets: small CIFAR ResNets whose activations are QCFS (Bu et al., ICLR 2022), the source ANNs of
ANN-to-SNN conversion (:func:`snnzoo.conversion.convert`, ``method='qcfs'`` or ``'exact'``).

They are ANNs: no time steps, input ``[B, C, H, W]``, logits ``[B, num_classes]``. Only operations an IF network
reproduces are used: convolutions, BatchNorm, QCFS, residual additions, average pooling (no max pooling) and a
linear classifier. Blocks: conv3x3-BN-QCFS-conv3x3-BN (+ shortcut: identity, or conv1x1-BN when the shape
changes) -> QCFS.
"""
from typing import List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
from timm.models import generate_default_cfgs

from ..layers.qcfs import QCFS
from ._builder import build_snn_model
from ._registry import register_model

__all__ = ['QCFSResNet']

_CIFAR10_MEAN, _CIFAR10_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)


def _conv_bn(cin: int, cout: int, kernel_size: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, kernel_size, stride, kernel_size // 2, bias=False), nn.BatchNorm2d(cout))


class QCFSBasicBlock(nn.Module):
    """y = QCFS(BN(conv(QCFS(BN(conv(x))))) + shortcut(x)); shortcut = identity or conv1x1-BN (stride, width)."""

    def __init__(self, cin: int, cout: int, stride: int, L: int):
        super().__init__()
        self.conv1, self.act1 = _conv_bn(cin, cout, 3, stride), QCFS(L)
        self.conv2 = _conv_bn(cout, cout, 3)
        self.shortcut = _conv_bn(cin, cout, 1, stride) if stride != 1 or cin != cout else nn.Identity()
        self.act2 = QCFS(L)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act2(self.conv2(self.act1(self.conv1(x))) + self.shortcut(x))


class QCFSResNet(nn.Module):
    """A CIFAR ResNet with QCFS activations.

    stem conv3x3 (``stem_width``)-BN-QCFS at full resolution; one stage per entry of ``widths`` (``layers`` blocks
    each, the first of stride 2); global average pool; dropout; linear classifier ``fc``.

    Args:
        widths: channels of each stage.
        layers: blocks per stage.
        stem_width: channels of the stem.
        L: QCFS quantization levels (the exact SNN's time steps).
        num_classes: classes; 0 makes ``forward`` return the pooled features.
        in_chans: input channels.
        img_size: nominal input size (for the pretrained config); any size works (global pooling).
        drop_rate: dropout before ``fc``.
        backend: accepted for the zoo's common constructor signature (``snnzoo-convert`` passes it); an ANN has no
            neurons, so it changes nothing.
    """

    def __init__(self, widths: Sequence[int] = (16, 32, 64), layers: Sequence[int] = (1, 1, 1),
                 stem_width: int = 16, L: int = 8, num_classes: int = 10, in_chans: int = 3,
                 img_size: Union[int, Tuple[int, int]] = 32, drop_rate: float = 0.0, backend: str = 'auto'):
        super().__init__()
        widths, layers = [int(w) for w in widths], [int(d) for d in layers]
        if len(widths) != len(layers) or not widths or min(layers) < 1 or min(widths) < 1:
            raise ValueError(f"QCFSResNet: widths and layers need one entry per stage (widths >= 1, layers >= 1), "
                             f"got widths={widths}, layers={layers}")
        self.num_classes, self.in_chans, self.L, self.drop_rate = num_classes, in_chans, int(L), drop_rate
        self.stem = nn.Sequential(*_conv_bn(in_chans, stem_width, 3), QCFS(L))
        stages, cin, self.feature_info = [], stem_width, [dict(num_chs=stem_width, reduction=1, module='stem')]
        for i, (width, depth) in enumerate(zip(widths, layers)):
            stages.append(nn.Sequential(*[QCFSBasicBlock(cin if j == 0 else width, width, 2 if j == 0 else 1, L)
                                          for j in range(depth)]))
            cin = width
            self.feature_info.append(dict(num_chs=width, reduction=2 ** (i + 1), module=f'stages.{i}'))
        self.stages = nn.Sequential(*stages)
        self.num_features = self.head_hidden_size = cin
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head_drop = nn.Dropout(drop_rate)
        self.fc = nn.Linear(cin, num_classes) if num_classes > 0 else nn.Identity()
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode='fan_out', nonlinearity='relu')

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.fc

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None) -> None:
        self.num_classes = num_classes
        self.fc = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, C, H, W]`` -> the last stage's map ``[B, widths[-1], H / 2^stages, W / 2^stages]``."""
        return self.stages(self.stem(x))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.head_drop(self.pool(x).flatten(1))
        return x if pre_logits else self.fc(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def forward_intermediates(self, x: torch.Tensor, indices=None, norm: bool = False, stop_early: bool = False,
                              output_fmt: str = 'NCHW', intermediates_only: bool = False):
        """timm's ``forward_intermediates``: feature maps after the stem (index 0) and each stage."""
        from timm.models._features import feature_take_indices
        take, max_index = feature_take_indices(len(self.stages) + 1, indices)
        intermediates: List[torch.Tensor] = []
        x = self.stem(x)
        if 0 in take:
            intermediates.append(x)
        stages = self.stages if not stop_early else self.stages[:max_index]
        for i, stage in enumerate(stages, start=1):
            x = stage(x)
            if i in take:
                intermediates.append(x)
        if intermediates_only:
            return intermediates
        return x, intermediates

    def prune_intermediate_layers(self, indices=1, prune_norm: bool = False, prune_head: bool = True):
        from timm.models._features import feature_take_indices
        take, max_index = feature_take_indices(len(self.stages) + 1, indices)
        self.stages = self.stages[:max_index]
        if prune_head:
            self.reset_classifier(0)
        return take


def _create(variant: str, pretrained: bool = False, **kwargs) -> QCFSResNet:
    n_stages = len(kwargs.get('widths', (16, 32, 64)))
    return build_snn_model(QCFSResNet, variant, pretrained,
                           feature_cfg=dict(feature_cls='getter', out_indices=tuple(range(n_stages + 1))), **kwargs)


def _cfg(**kwargs) -> dict:
    return {'num_classes': 10, 'input_size': (3, 32, 32), 'pool_size': None, 'crop_pct': 1.0,
            'interpolation': 'bicubic', 'mean': _CIFAR10_MEAN, 'std': _CIFAR10_STD, 'first_conv': 'stem.0',
            'classifier': 'fc', 'paper_ids': 'arXiv:2303.04347',
            'paper_name': 'Optimal ANN-SNN Conversion for High-accuracy and Ultra-low-latency Spiking Neural Networks',
            'origin_url': 'https://github.com/putshua/SNN_conversion_QCFS', **kwargs}


default_cfgs = generate_default_cfgs({
    'qcfs_resnet_cifar': _cfg(file='qcfs_resnet_cifar.cifar10-b549e8bed8742999.safetensors'),
    'qcfs_resnet_fmnist': _cfg(input_size=(1, 28, 28), mean=(0.286,), std=(0.353,)),
})


@register_model
def qcfs_resnet_cifar(pretrained: bool = False, **kwargs) -> QCFSResNet:
    """The CIFAR-10 recipe's QCFS ResNet (``experiment=qcfs_cifar10``): stem 16, stages 16/32/64 of one block, L=8."""
    model_args = dict(widths=(16, 32, 64), layers=(1, 1, 1), stem_width=16, L=8)
    return _create('qcfs_resnet_cifar', pretrained, **dict(model_args, **kwargs))


@register_model
def qcfs_resnet_fmnist(pretrained: bool = False, **kwargs) -> QCFSResNet:
    """The Fashion-MNIST recipe's QCFS ResNet (``experiment=qcfs_fashion_mnist``): stem 8, stages 16/32, L=4."""
    model_args = dict(widths=(16, 32), layers=(1, 1), stem_width=8, L=4, in_chans=1, img_size=28)
    return _create('qcfs_resnet_fmnist', pretrained, **dict(model_args, **kwargs))
