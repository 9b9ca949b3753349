"""Image and event (DVS) data sets, transforms and event-to-frame integration.

Public API::

    from snnzoo.data import build_dataset, build_transforms, build_event_transforms, dataset_info

    ds = build_dataset('digits', split='train')              # main job: 1437 train / 360 test, [1, 8, 8] in [0, 1]
    ds = build_dataset('fashion_mnist', '../shared/data/fashion-mnist', 'test')     # [1, 28, 28] normalised
    ds = build_dataset('cifar10', 'data/cifar10-jpg', 'train',                      # torchvision's or a folder
                       transform=build_transforms('cifar10', is_training=True,
                                                  auto_augment='rand-m9-n1-mstd0.4-inc1', re_prob=0.25))
    ds = build_dataset('imagenet', 'data/imagenet', 'val')                          # train/<class>, val/<class>
    ds = build_dataset('nmnist', 'data/nmnist-small', 'train', T=16, split_by='number')
    frames, label = ds[0]                                     # float32 [T, 2, 34, 34] event counts, int
    ds = build_dataset('cifar10_dvs', 'data/CIFAR10DVS', 'test', T=16,
                       transform=build_event_transforms(img_size=64))       # 9:1 per class (split_protocol)
    ds = build_dataset('dvs128_gesture', 'data/DVS128Gesture', 'train', T=16)   # 1176 train / 288 test
    dataset_info('cifar10_dvs')   # DatasetInfo(kind='event', num_classes=10, input_size=(2, 128, 128), ...)

- ``build_dataset(name, root=None, split='train', transform=None, target_transform=None, **opts)``: names are
  ``list_datasets()``: digits, cifar10, cifar100, imagenet, image_folder, fashion_mnist, nmnist, cifar10_dvs,
  dvs128_gesture. ``split`` is 'train' or 'test' ('val' is an alias). Every item is ``(x, int label)``;
  a DataLoader batch of an event data set is ``[B, T, 2, H, W]``, the layout snnzoo models accept, and of the
  others ``[B, C, H, W]``. Image data sets default to ``build_transforms(name, is_training=split == 'train')``
  and also work with timm's ``create_loader`` (which sets ``dataset.transform``); for digits and event data use
  a plain ``torch.utils.data.DataLoader``.
- ``dataset_info(name)``: :class:`DatasetInfo` (kind, num_classes, input_size (C, H, W), mean, std, crop_pct,
  interpolation, train crop scale / ratio).
- ``build_transforms(name, is_training, **timm_kwargs)``: timm's ``create_transform`` with the data set's defaults.
- ``build_event_transforms(is_training, img_size=None, hflip=0., trivial_augment=False)``: frame transforms.
- Event files: ``read_nmnist_bin``, ``read_aedat2``, ``read_aedat31``, ``read_gesture_labels`` ->
  ``{'t', 'x', 'y', 'p'}`` numpy arrays; a truncated or corrupt file raises :class:`EventFileError` naming it.
- Frames: ``integrate_frames(events, T, split_by, height, width)`` (SpikingJelly's 'number' / 'time' split)
  and the on-disk :class:`FrameCache` (``$SNNZOO_CACHE/frames`` or ``~/.cache/snnzoo/frames`` by default).
"""
from .digits import Digits, digits_split
from .event_datasets import CIFAR10DVS, NMNIST, DVS128Gesture, EventFrameDataset
from .events import EventFileError, read_aedat2, read_aedat31, read_gesture_labels, read_nmnist_bin
from .factory import DatasetInfo, build_dataset, dataset_info, list_datasets
from .fashion_mnist import FashionMNIST, IdxFileError, read_idx
from .frames import FrameCache, default_cache_dir, integrate_frames
from .transforms import build_event_transforms, build_transforms

__all__ = [
    'build_dataset', 'dataset_info', 'list_datasets', 'DatasetInfo', 'build_transforms', 'build_event_transforms',
    'Digits', 'digits_split', 'FashionMNIST', 'NMNIST', 'CIFAR10DVS', 'DVS128Gesture', 'EventFrameDataset',
    'EventFileError', 'IdxFileError', 'read_nmnist_bin', 'read_aedat2', 'read_aedat31', 'read_gesture_labels',
    'read_idx', 'integrate_frames', 'FrameCache', 'default_cache_dir',
]
