"""Event-camera data sets as frames: N-MNIST, CIFAR10-DVS and DVS128 Gesture, with their standard splits.

Each item is ``(frames, label)``: ``frames`` a float32 tensor ``[T, 2, H, W]`` of event counts (channel =
polarity, see :func:`snnzoo.data.frames.integrate_frames`), so a DataLoader batch is ``[B, T, 2, H, W]``, the
layout snnzoo models accept; ``label`` an int. Frames are computed once and cached on disk
(:class:`snnzoo.data.frames.FrameCache`); ``prepare()`` fills the cache ahead of training.

Expected layouts under ``root`` (the original archives, extracted):

- N-MNIST: ``Train/<digit>/NNNNN.bin`` and ``Test/<digit>/NNNNN.bin``.
- CIFAR10-DVS: ``<class>/cifar10_<class>_<i>.aedat`` for the 10 CIFAR-10 classes.
- DVS128 Gesture: ``DvsGesture/`` (or ``root`` itself) holding ``trials_to_train.txt``, ``trials_to_test.txt``,
  ``userXX_<lighting>.aedat`` and ``userXX_<lighting>_labels.csv``.
"""
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple, Union

import numpy as np
import torch
from torch.utils.data import Dataset

from .events import EventFileError, read_aedat2, read_aedat31, read_gesture_labels, read_nmnist_bin
from .frames import SPLIT_MODES, FrameCache, default_cache_dir, integrate_frames

__all__ = ['EventFrameDataset', 'NMNIST', 'CIFAR10DVS', 'DVS128Gesture', 'read_cifar10_dvs', 'CIFAR10_CLASSES',
           'GESTURE_CLASSES']

CIFAR10_CLASSES = ('airplane', 'automobile', 'bird', 'cat', 'deer', 'dog', 'frog', 'horse', 'ship', 'truck')
GESTURE_CLASSES = ('hand_clapping', 'right_hand_wave', 'left_hand_wave', 'right_arm_clockwise',
                   'right_arm_counter_clockwise', 'left_arm_clockwise', 'left_arm_counter_clockwise',
                   'arm_roll', 'air_drums', 'air_guitar', 'other_gestures')


@dataclass(frozen=True)
class EventSample:
    """One sample: ``name`` (unique in the data set, a relative path), ``label``, the ``sources`` it is read from."""
    name: str
    label: int
    sources: Tuple[Path, ...]


def _normalise_split(split: str) -> str:
    if split in ('train', 'training'):
        return 'train'
    if split in ('test', 'val', 'validation'):
        return 'test'
    raise ValueError(f"split must be 'train' or 'test' ('val' is an alias of 'test'), got {split!r}")


def _require_dir(path: Path, dataset: str, layout: str) -> Path:
    if not path.is_dir():
        raise FileNotFoundError(f"{dataset}: folder {path} not found; expected the layout {layout} under the root")
    return path


def read_cifar10_dvs(path: Union[str, Path]) -> Dict[str, np.ndarray]:
    """A CIFAR10-DVS recording, oriented as SpikingJelly orients it: ``x = 127 - y_addr``, ``y = 127 - x_addr``,
    ``p = 1 - p_addr`` (see :func:`snnzoo.data.events.read_aedat2` for the addresses)."""
    ev = read_aedat2(path)
    return {'t': ev['t'], 'x': 127 - ev['y'], 'y': 127 - ev['x'], 'p': (1 - ev['p']).astype(np.uint8)}


class EventFrameDataset(Dataset):
    """Base class: a list of :class:`EventSample` turned into cached frames ``[T, 2, H, W]``.

    Subclasses set ``name``, ``sensor_size`` (H, W) and ``classes``, build ``self.samples`` and implement
    ``read_events(sample)``.
    """
    name: str = ''
    sensor_size: Tuple[int, int] = (0, 0)
    classes: Tuple[str, ...] = ()

    def __init__(self, root: Union[str, Path], split: str = 'train', T: int = 16, split_by: str = 'number',
                 cache_dir: Optional[Union[str, Path]] = None, cache: bool = True,
                 transform: Optional[Callable] = None, target_transform: Optional[Callable] = None):
        if split_by not in SPLIT_MODES:
            raise ValueError(f"split_by must be one of {SPLIT_MODES}, got {split_by!r}")
        if not isinstance(T, int) or T < 1:
            raise ValueError(f"T (the number of frames) must be a positive integer, got {T!r}")
        self.root = Path(root).expanduser().resolve()
        if not self.root.is_dir():
            raise FileNotFoundError(f"{self.name}: data root {self.root} is not a folder")
        self.split = _normalise_split(split)
        self.T, self.split_by = T, split_by
        self.transform, self.target_transform = transform, target_transform
        self.samples: List[EventSample] = []
        settings = dict(root=str(self.root), T=T, split_by=split_by, sensor_size=list(self.sensor_size))
        self.cache = (FrameCache(cache_dir or default_cache_dir(), self.name, settings,
                                 frame_shape=(T, 2, *self.sensor_size)) if cache else None)

    def read_events(self, sample: EventSample) -> Dict[str, np.ndarray]:
        raise NotImplementedError

    @property
    def targets(self) -> List[int]:
        return [sample.label for sample in self.samples]

    def __len__(self) -> int:
        return len(self.samples)

    def _integrate(self, sample: EventSample) -> np.ndarray:
        events = self.read_events(sample)
        try:
            return integrate_frames(events, self.T, self.split_by, *self.sensor_size)
        except ValueError as err:
            raise EventFileError(sample.sources[0], str(err)) from None

    def frames(self, index: int) -> np.ndarray:
        """Event counts ``[T, 2, H, W]`` of sample ``index`` (from the cache when it has them)."""
        sample = self.samples[index]
        if self.cache is None:
            return self._integrate(sample)
        return self.cache.get(sample.name, sample.sources, lambda: self._integrate(sample))

    def __getitem__(self, index: int):
        frames = torch.from_numpy(self.frames(index).astype(np.float32))
        label = self.samples[index].label
        if self.transform is not None:
            frames = self.transform(frames)
        if self.target_transform is not None:
            label = self.target_transform(label)
        return frames, label

    def prepare(self, progress: bool = False) -> None:
        """Compute and cache the frames of every sample not cached yet, grouped by source file (so a DVS128 Gesture
        trial is decoded once); nothing to do without a cache."""
        if self.cache is None:
            return
        indices = [i for i, sample in enumerate(self.samples)
                   if not self.cache.path(sample.name, sample.sources).exists()]
        indices.sort(key=lambda i: str(self.samples[i].sources[0]))
        if progress:
            from tqdm import tqdm
            indices = tqdm(indices, desc=f"{self.name} {self.split} frames")
        for index in indices:
            self.frames(index)

    def extra_repr(self) -> str:
        return (f"root={str(self.root)!r}, split={self.split!r}, T={self.T}, split_by={self.split_by!r}, "
                f"samples={len(self)}, cache={self.cache!r}")

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.extra_repr()})"


class NMNIST(EventFrameDataset):
    """N-MNIST (Orchard et al. 2015): 34 x 34 ATIS saccade recordings of MNIST digits; Train / Test folders."""
    name = 'nmnist'
    sensor_size = (34, 34)
    classes = tuple(str(d) for d in range(10))

    def __init__(self, root, split='train', T=16, split_by='number', **kwargs):
        super().__init__(root, split, T, split_by, **kwargs)
        layout = "Train/<digit>/*.bin, Test/<digit>/*.bin"
        folder = _require_dir(self.root / ('Train' if self.split == 'train' else 'Test'), 'N-MNIST', layout)
        for label, digit in enumerate(self.classes):
            files = sorted((folder / digit).glob('*.bin')) if (folder / digit).is_dir() else []
            self.samples += [EventSample(f"{folder.name}/{digit}/{f.stem}", label, (f,)) for f in files]
        if not self.samples:
            raise FileNotFoundError(f"N-MNIST: no .bin recordings in {folder}; expected the layout {layout}")

    def read_events(self, sample):
        return read_nmnist_bin(sample.sources[0])


class CIFAR10DVS(EventFrameDataset):
    """CIFAR10-DVS (Li et al. 2017): 10,000 DVS128 recordings (AEDAT 2.0), 1000 per class, no official split.

    Events are oriented as SpikingJelly does (:func:`read_cifar10_dvs`).
    ``split_protocol``:

    - ``'ratio'`` (default): per class, the first ``ceil(train_ratio * n)`` recordings in file-name order
      (``sorted`` strings, as SpikingJelly's folder lists them) train and the rest test: the 9:1 split of
      ``spikingjelly.datasets.split_to_train_test_set(0.9, ...)`` used by Spikformer, QKFormer and others.
    - ``'tebn'``: recordings 0-99 of each class test, 100-999 train (the TEBN split, SpikingJelly's
      ``CIFAR10DVSTEBNSplit``).
    """
    name = 'cifar10_dvs'
    sensor_size = (128, 128)
    classes = CIFAR10_CLASSES

    def __init__(self, root, split='train', T=16, split_by='number', split_protocol: str = 'ratio',
                 train_ratio: float = 0.9, **kwargs):
        super().__init__(root, split, T, split_by, **kwargs)
        if split_protocol not in ('ratio', 'tebn'):
            raise ValueError(f"split_protocol must be 'ratio' (9:1 per class) or 'tebn' (0-99 test), "
                             f"got {split_protocol!r}")
        if not 0 < train_ratio < 1:
            raise ValueError(f"train_ratio must be in (0, 1), got {train_ratio}")
        self.split_protocol, self.train_ratio = split_protocol, train_ratio
        layout = "<class>/cifar10_<class>_<i>.aedat for the classes " + ", ".join(self.classes)
        train = self.split == 'train'
        for label, cls in enumerate(self.classes):
            files = sorted(_require_dir(self.root / cls, 'CIFAR10-DVS', layout).glob('*.aedat'), key=lambda f: f.name)
            if not files:
                raise FileNotFoundError(f"CIFAR10-DVS: no .aedat recordings in {self.root / cls}; "
                                        f"expected the layout {layout}")
            if split_protocol == 'ratio':
                cut = int(np.ceil(len(files) * train_ratio))
                chosen = files[:cut] if train else files[cut:]
            else:
                chosen = [f for f in files if (self._index(f) >= 100) == train]
            self.samples += [EventSample(f"{cls}/{f.stem}", label, (f,)) for f in chosen]

    @staticmethod
    def _index(path: Path) -> int:
        match = re.search(r'_(\d+)$', path.stem)
        if match is None:
            raise ValueError(f"CIFAR10-DVS: cannot read the recording number from {path.name} "
                             f"(expected cifar10_<class>_<i>.aedat), needed by split_protocol='tebn'")
        return int(match.group(1))

    def read_events(self, sample):
        return read_cifar10_dvs(sample.sources[0])


class DVS128Gesture(EventFrameDataset):
    """DVS128 Gesture (Amir et al. 2017): 11 gestures, 29 users, AEDAT 3.1 trials cut by their label CSVs.

    The split is the official one (``trials_to_train.txt`` / ``trials_to_test.txt``: users 1-23 train, 24-29 test),
    giving 1176 train and 288 test samples as in SpikingJelly. A sample is the events of row ``k`` of
    ``<trial>_labels.csv`` with ``start <= t < end``. Labels: ``label_order='csv'`` (default) gives the CSV class
    minus one (0..10, :data:`GESTURE_CLASSES`); ``'spikingjelly'`` gives SpikingJelly's folder order (class
    folders sorted as strings: '0', '1', '10', '2', ...), which checkpoints trained with SpikingJelly's
    ``DVS128Gesture`` use.
    """
    name = 'dvs128_gesture'
    sensor_size = (128, 128)
    classes = GESTURE_CLASSES

    def __init__(self, root, split='train', T=16, split_by='number', label_order: str = 'csv', **kwargs):
        super().__init__(root, split, T, split_by, **kwargs)
        if label_order not in ('csv', 'spikingjelly'):
            raise ValueError(f"label_order must be 'csv' or 'spikingjelly', got {label_order!r}")
        self.label_order = label_order
        folder = self.root / 'DvsGesture' if (self.root / 'DvsGesture').is_dir() else self.root
        trials_file = folder / f"trials_to_{self.split}.txt"
        if not trials_file.is_file():
            raise FileNotFoundError(f"DVS128 Gesture: {trials_file} not found; expected DvsGesture/ (or the root) "
                                    f"holding trials_to_train.txt, trials_to_test.txt, userXX_<lighting>.aedat and "
                                    f"userXX_<lighting>_labels.csv")
        remap = self._spikingjelly_labels() if label_order == 'spikingjelly' else list(range(len(self.classes)))
        self._rows: Dict[str, Tuple[int, int]] = {}
        samples = []
        for line in trials_file.read_text().splitlines():
            trial = line.strip()
            if not trial:
                continue
            aedat = folder / trial
            labels_csv = folder / f"{aedat.stem}_labels.csv"
            for path in (aedat, labels_csv):
                if not path.is_file():
                    raise FileNotFoundError(f"DVS128 Gesture: {path} (listed in {trials_file.name}) not found")
            counts = [0] * len(self.classes)
            for cls, start, end in read_gesture_labels(labels_csv, len(self.classes)):
                label = int(cls) - 1
                name = f"{label}/{aedat.stem}_{counts[label]}"
                counts[label] += 1
                self._rows[name] = (int(start), int(end))
                samples.append(EventSample(name, remap[label], (aedat, labels_csv)))
        self.samples = sorted(samples, key=lambda s: (s.label, s.name))
        self._trial_cache: Tuple[Optional[Path], Optional[Dict[str, np.ndarray]]] = (None, None)

    def _spikingjelly_labels(self) -> List[int]:
        folders = sorted(str(label) for label in range(len(self.classes)))
        return [folders.index(str(label)) for label in range(len(self.classes))]

    def __getstate__(self):
        return dict(self.__dict__, _trial_cache=(None, None))  # DataLoader workers decode their own trials

    def read_events(self, sample):
        aedat = sample.sources[0]
        cached_path, events = self._trial_cache
        if cached_path != aedat:
            events = read_aedat31(aedat, self.sensor_size)
            self._trial_cache = (aedat, events)
        start, end = self._rows[sample.name]
        mask = (events['t'] >= start) & (events['t'] < end)
        return {key: value[mask] for key, value in events.items()}
