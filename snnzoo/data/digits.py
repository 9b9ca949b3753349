"""scikit-learn's digits (UCI optical handwritten digits): 1797 real 8 x 8 images, 10 classes, no download.

The data set has no official split; we use a fixed stratified split (``test_size`` per class, ``seed``), so every
run and every machine sees the same train / test images. Items are ``(image, label)`` with ``image`` a float32
tensor ``[1, 8, 8]`` in ``[0, 1]`` (the 0..16 pen counts divided by 16), or ``[1, img_size, img_size]`` resized
bilinearly when ``img_size`` is given; ``transform`` then applies to that tensor.
"""
from typing import Callable, Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

__all__ = ['Digits', 'digits_split']


def _load_digits():
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise ImportError("the digits data set needs scikit-learn: pip install 'snnzoo[train]'") from None
    return load_digits()


def digits_split(test_size: float = 0.2, seed: int = 0):
    """Sorted index arrays ``(train, test)`` of the stratified split of the 1797 digits."""
    from sklearn.model_selection import train_test_split
    labels = _load_digits().target
    train, test = train_test_split(np.arange(len(labels)), test_size=test_size, stratify=labels, random_state=seed)
    return np.sort(train), np.sort(test)


class Digits(Dataset):
    """The digits split ``'train'`` (80%: 1437 images) or ``'test'`` (20%: 360 images) by default."""
    classes = tuple(str(d) for d in range(10))

    def __init__(self, split: str = 'train', test_size: float = 0.2, seed: int = 0, img_size: Optional[int] = None,
                 transform: Optional[Callable] = None, target_transform: Optional[Callable] = None):
        if split not in ('train', 'val', 'test'):
            raise ValueError(f"split must be 'train' or 'test' ('val' is an alias of 'test'), got {split!r}")
        if not 0 < test_size < 1:
            raise ValueError(f"test_size must be a fraction in (0, 1), got {test_size}")
        self.split = 'train' if split == 'train' else 'test'
        digits = _load_digits()
        train, test = digits_split(test_size, seed)
        self.indices = train if self.split == 'train' else test
        images = torch.from_numpy(digits.images[self.indices].astype(np.float32) / 16.0).unsqueeze(1)
        if img_size is not None and img_size != 8:
            images = F.interpolate(images, size=(img_size, img_size), mode='bilinear', align_corners=False)
        self.data = images
        self.targets = torch.from_numpy(digits.target[self.indices]).long()
        self.transform, self.target_transform = transform, target_transform

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, index: int):
        image, label = self.data[index], int(self.targets[index])
        if self.transform is not None:
            image = self.transform(image)
        if self.target_transform is not None:
            label = self.target_transform(label)
        return image, label
