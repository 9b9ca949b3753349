"""Data sets by name: ``build_dataset(name, root, split, **opts)`` and their facts, ``dataset_info(name)``."""
import difflib
from dataclasses import dataclass
from typing import Callable, Dict, Optional, Tuple

from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

__all__ = ['DatasetInfo', 'dataset_info', 'list_datasets', 'build_dataset']


@dataclass(frozen=True)
class DatasetInfo:
    """What a data set holds. ``kind``: ``'image'`` (PIL images, timm transforms), ``'tensor'`` (ready tensors)
    or ``'event'`` (frames ``[T, 2, H, W]``). ``input_size`` (C, H, W) is the native size (events: the sensor);
    ``num_classes`` is None for a generic image folder. The rest are the default transform settings."""
    name: str
    kind: str
    num_classes: Optional[int]
    input_size: Tuple[int, int, int]
    mean: Optional[Tuple[float, ...]] = None
    std: Optional[Tuple[float, ...]] = None
    crop_pct: float = 1.0
    interpolation: str = 'bicubic'
    scale: Tuple[float, float] = (1.0, 1.0)
    ratio: Tuple[float, float] = (1.0, 1.0)


_IMAGENET = dict(mean=IMAGENET_DEFAULT_MEAN, std=IMAGENET_DEFAULT_STD, crop_pct=0.875, interpolation='bicubic',
                 scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3))
_INFO: Dict[str, DatasetInfo] = {info.name: info for info in (
    DatasetInfo('digits', 'tensor', 10, (1, 8, 8)),
    DatasetInfo('cifar10', 'image', 10, (3, 32, 32), (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    DatasetInfo('cifar100', 'image', 100, (3, 32, 32), (0.5071, 0.4867, 0.4408), (0.2675, 0.2565, 0.2761)),
    DatasetInfo('imagenet', 'image', 1000, (3, 224, 224), **_IMAGENET),
    DatasetInfo('image_folder', 'image', None, (3, 224, 224), **_IMAGENET),
    DatasetInfo('fashion_mnist', 'image', 10, (1, 28, 28), (0.2860,), (0.3530,)),
    DatasetInfo('nmnist', 'event', 10, (2, 34, 34)),
    DatasetInfo('cifar10_dvs', 'event', 10, (2, 128, 128)),
    DatasetInfo('dvs128_gesture', 'event', 11, (2, 128, 128)),
)}


def list_datasets() -> list:
    return sorted(_INFO)


def dataset_info(name: str) -> DatasetInfo:
    """The :class:`DatasetInfo` of ``name``; an unknown name raises an error suggesting close ones."""
    key = name.lower().replace('-', '_')
    if key not in _INFO:
        close = difflib.get_close_matches(key, _INFO, n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise ValueError(f"unknown data set {name!r}{hint} (known: {', '.join(list_datasets())})")
    return _INFO[key]


def build_dataset(name: str, root=None, split: str = 'train', transform: Optional[Callable] = None,
                  target_transform: Optional[Callable] = None, **opts):
    """Build data set ``name`` (see :func:`list_datasets`) from ``root`` for ``split`` ('train', 'test'/'val').

    ``transform``: for image data sets, ``None`` means ``build_transforms(name, is_training=split == 'train')``
    (timm's defaults for the data set: tensors out); for tensor and event data sets it is applied to the item
    tensor as given. ``opts`` go to the data set: digits (``test_size``, ``seed``, ``img_size``); cifar
    (``download``); event data sets (``T``, ``split_by``, ``cache_dir``, ``cache``, ``prepare`` (fill the frame
    cache now, default True), ``progress``; CIFAR10-DVS ``split_protocol``, ``train_ratio``; DVS128 Gesture
    ``label_order``).
    """
    info = dataset_info(name)
    if root is None and info.name != 'digits':
        raise ValueError(f"data set {info.name!r} needs root= (the folder holding its files)")
    if transform is None and info.kind == 'image':
        from .transforms import build_transforms
        transform = build_transforms(info.name, is_training=split == 'train')
    common = dict(transform=transform, target_transform=target_transform)
    if info.name == 'digits':
        from .digits import Digits
        return Digits(split, **common, **opts)
    if info.name in ('cifar10', 'cifar100'):
        from .images import cifar
        return cifar(root, split, info.num_classes, **common, **opts)
    if info.name in ('imagenet', 'image_folder'):
        from .images import image_folder
        return image_folder(root, split, **common, num_classes=info.num_classes, **opts)
    if info.name == 'fashion_mnist':
        from .fashion_mnist import FashionMNIST
        return FashionMNIST(root, split, **common, **opts)
    from .event_datasets import CIFAR10DVS, NMNIST, DVS128Gesture
    cls = {'nmnist': NMNIST, 'cifar10_dvs': CIFAR10DVS, 'dvs128_gesture': DVS128Gesture}[info.name]
    prepare, progress = opts.pop('prepare', True), opts.pop('progress', False)
    dataset = cls(root, split, **common, **opts)
    if prepare and dataset.cache is not None:
        dataset.prepare(progress=progress)
    return dataset
