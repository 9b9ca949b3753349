"""Static image data sets: CIFAR-10/100 (torchvision's format or an image folder), ImageNet and any image folder.

Items are ``(transform(PIL image), int label)``, torchvision's convention, so timm's ``create_loader`` (which sets
``dataset.transform``) and :func:`snnzoo.data.build_transforms` both work with them.
"""
from pathlib import Path
from typing import Callable, Optional, Union

from torchvision import datasets

__all__ = ['image_folder', 'cifar', 'split_folder']

_HELD_OUT = ('val', 'test')


def split_folder(root: Union[str, Path], split: str) -> Path:
    """``root/train`` for ``split='train'``; ``root/val`` or ``root/test`` (whichever exists) for 'val' / 'test'."""
    root = Path(root).expanduser()
    if split == 'train':
        names = ('train',)
    elif split in _HELD_OUT:
        names = (split,) + tuple(name for name in _HELD_OUT if name != split)
    else:
        raise ValueError(f"split must be 'train', 'val' or 'test', got {split!r}")
    for name in names:
        if (root / name).is_dir():
            return root / name
    raise FileNotFoundError(f"image folder {root}: no {' or '.join(names)} folder; expected the layout "
                            f"train/<class>/*.jpg and val/<class>/*.jpg (or test/<class>/*.jpg)")


def image_folder(root: Union[str, Path], split: str = 'train', transform: Optional[Callable] = None,
                 target_transform: Optional[Callable] = None, num_classes: Optional[int] = None):
    """ImageNet or any image folder: ``root/{train,val|test}/<class>/<image>``; labels = sorted class folders."""
    folder = split_folder(root, split)
    dataset = datasets.ImageFolder(str(folder), transform=transform, target_transform=target_transform)
    if num_classes is not None and len(dataset.classes) != num_classes:
        raise ValueError(f"image folder {folder} has {len(dataset.classes)} class folders, expected {num_classes}")
    return dataset


def cifar(root: Union[str, Path], split: str = 'train', num_classes: int = 10, transform: Optional[Callable] = None,
          target_transform: Optional[Callable] = None, download: bool = False):
    """CIFAR-10 / CIFAR-100 from torchvision's format (``cifar-10-batches-py`` / ``cifar-100-python`` under
    ``root``; ``download=True`` fetches it) or from an image folder ``root/{train,test}/<class>/*`` (such as the
    JPEG copy ``cifar10-jpg``). Class folders sort alphabetically into the official label order."""
    if num_classes not in (10, 100):
        raise ValueError(f"CIFAR has 10 or 100 classes, got num_classes={num_classes}")
    if split not in ('train', 'val', 'test'):
        raise ValueError(f"split must be 'train' or 'test' ('val' is an alias of 'test'), got {split!r}")
    root = Path(root).expanduser()
    cls, folder = (datasets.CIFAR10, 'cifar-10-batches-py') if num_classes == 10 else \
        (datasets.CIFAR100, 'cifar-100-python')
    if download or (root / folder).is_dir():
        return cls(str(root), train=split == 'train', transform=transform, target_transform=target_transform,
                   download=download)
    if (root / 'train').is_dir():
        return image_folder(root, split, transform, target_transform, num_classes=num_classes)
    raise FileNotFoundError(f"CIFAR-{num_classes}: {root} holds neither torchvision's {folder}/ nor an image folder "
                            f"train/<class>/*; pass download=True to fetch torchvision's copy")
