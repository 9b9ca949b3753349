"""Fashion-MNIST from its IDX files (gzip or not): 60,000 / 10,000 grey 28 x 28 images, 10 classes.

The files may lie directly under ``root`` (``train-images-idx3-ubyte.gz`` ...) or in torchvision's layout
``root/FashionMNIST/raw/``. The IDX reader decodes the same tensors as torchvision's
``read_image_file`` / ``read_label_file`` (the tests compare them) and also reads the ``.gz`` files, checking
the header and the length so that a truncated file gives an error naming it.
"""
import gzip
import zlib
from pathlib import Path
from typing import Callable, Optional, Union

import numpy as np
import torch
from PIL import Image
from torchvision.datasets import VisionDataset

__all__ = ['FashionMNIST', 'IdxFileError', 'read_idx', 'FASHION_MNIST_CLASSES']

FASHION_MNIST_CLASSES = ('T-shirt/top', 'Trouser', 'Pullover', 'Dress', 'Coat', 'Sandal', 'Shirt', 'Sneaker',
                         'Bag', 'Ankle boot')
_IDX_TYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: np.dtype('>i2'), 0x0C: np.dtype('>i4'),
              0x0D: np.dtype('>f4'), 0x0E: np.dtype('>f8')}


class IdxFileError(ValueError):
    """An IDX file is truncated, corrupt or not an IDX file (the message names it)."""


def read_idx(path: Union[str, Path]) -> torch.Tensor:
    """Read an IDX file (``.gz`` or plain): magic ``0x0000 <type> <ndim>``, ndim big-endian uint32 sizes, data."""
    path = Path(path)
    try:
        raw = path.read_bytes()
        if raw[:2] == b'\x1f\x8b':
            raw = gzip.decompress(raw)
    except (EOFError, gzip.BadGzipFile, zlib.error) as err:
        raise IdxFileError(f"{path}: the gzip stream is truncated or corrupt ({err})") from None
    if len(raw) < 4 or raw[:2] != b'\0\0' or raw[2] not in _IDX_TYPES:
        raise IdxFileError(f"{path}: not an IDX file (bad magic number {raw[:4].hex()})")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise IdxFileError(f"{path}: truncated inside its header")
    shape = tuple(int(n) for n in np.frombuffer(raw, dtype='>u4', count=ndim, offset=4))
    dtype = np.dtype(_IDX_TYPES[raw[2]])
    expected = header + int(np.prod(shape)) * dtype.itemsize
    if len(raw) != expected:
        raise IdxFileError(f"{path}: {len(raw)} bytes, but an IDX array of shape {shape} and type {dtype} takes "
                           f"{expected}: the file is truncated or corrupt")
    array = np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape)
    return torch.from_numpy(array.astype(dtype.newbyteorder('=')))


def _find(root: Path, stem: str) -> Path:
    for folder in (root, root / 'FashionMNIST' / 'raw'):
        for name in (stem, stem + '.gz'):
            if (folder / name).is_file():
                return folder / name
    raise FileNotFoundError(f"Fashion-MNIST: {stem}[.gz] not found in {root} or {root / 'FashionMNIST' / 'raw'}")


class FashionMNIST(VisionDataset):
    """Fashion-MNIST; items are ``(transform(PIL 'L' image), int label)`` (torchvision's convention)."""
    classes = FASHION_MNIST_CLASSES

    def __init__(self, root: Union[str, Path], split: str = 'train', transform: Optional[Callable] = None,
                 target_transform: Optional[Callable] = None):
        super().__init__(str(root), transform=transform, target_transform=target_transform)
        if split not in ('train', 'val', 'test'):
            raise ValueError(f"split must be 'train' or 'test' ('val' is an alias of 'test'), got {split!r}")
        self.split = 'train' if split == 'train' else 'test'
        prefix = 'train' if self.split == 'train' else 't10k'
        root = Path(root).expanduser()
        images_file = _find(root, f"{prefix}-images-idx3-ubyte")
        labels_file = _find(root, f"{prefix}-labels-idx1-ubyte")
        self.data, self.targets = read_idx(images_file), read_idx(labels_file).long()
        if self.data.dim() != 3 or self.targets.dim() != 1 or len(self.data) != len(self.targets):
            raise IdxFileError(f"{images_file} / {labels_file}: images {tuple(self.data.shape)} and labels "
                               f"{tuple(self.targets.shape)} do not pair up as [N, 28, 28] and [N]")

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, index: int):
        image, label = Image.fromarray(self.data[index].numpy()), int(self.targets[index])
        if self.transform is not None:
            image = self.transform(image)
        if self.target_transform is not None:
            label = self.target_transform(label)
        return image, label
