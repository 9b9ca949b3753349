"""Event-to-frame integration (as SpikingJelly does it) and an on-disk frame cache.

``integrate_frames(events, T, split_by, height, width)`` sums the events of ``T`` consecutive segments into
two-channel count frames ``[T, 2, H, W]`` (channel = polarity): ``frames[j, p, y, x] = #{i in segment j :
(p_i != 0, y_i, x_i) = (p, y, x)}``. Segment ``j`` holds the events with index in ``[l_j, r_j)``:

- ``split_by='number'``: ``l_j = j * (N // T)``, ``r_j = l_j + N // T``, and the last segment runs to ``N``.
- ``split_by='time'``: with ``dt = (t_{N-1} - t_0) // T``, segment ``j`` holds the events with
  ``t_0 + j*dt <= t < t_0 + (j+1)*dt``, and the last segment runs to ``N`` (events in time order).

This equals ``spikingjelly.datasets.integrate_events_by_fixed_frames_number`` (the tests compare them); where
SpikingJelly fails (an empty time segment, no events) we return empty frames.

:class:`FrameCache` stores the frames of each sample on disk, under a folder named by a hash of every setting
that changes them (data set, root, T, split_by, sensor size, format version), so a changed setting never
reuses a stale cache; each file is also named by the size and mtime of its source files, and is written to a
temporary file and renamed (``os.replace``), so a crash never leaves a partial file behind (and the temporary file of
a killed writer is removed when the cache is next opened).
"""
import hashlib
import json
import os
import warnings
import zipfile
from pathlib import Path
from typing import Callable, Dict, Iterable, Optional, Tuple, Union

import numpy as np

from .._files import atomic_write, remove_stale_temporaries

__all__ = ['SPLIT_MODES', 'integrate_frames', 'segment_bounds', 'FrameCache', 'default_cache_dir']

SPLIT_MODES = ('number', 'time')
FORMAT_VERSION = 1  # bump when the reading or integration of any data set changes what a cached file holds


def segment_bounds(t: np.ndarray, T: int, split_by: str):
    """Index bounds ``(l, r)`` (each ``[T]`` int64) of the T segments; see the module docstring."""
    if split_by not in SPLIT_MODES:
        raise ValueError(f"split_by must be one of {SPLIT_MODES}, got {split_by!r}")
    if not isinstance(T, (int, np.integer)) or T < 1:
        raise ValueError(f"the number of frames T must be a positive integer, got {T!r}")
    n = len(t)
    if split_by == 'number':
        left = np.arange(T, dtype=np.int64) * (n // T)
    elif n == 0:
        left = np.zeros(T, dtype=np.int64)
    else:
        dt = (int(t[-1]) - int(t[0])) // T
        left = np.searchsorted(t, int(t[0]) + dt * np.arange(T, dtype=np.int64), side='left').astype(np.int64)
    right = np.append(left[1:], n).astype(np.int64)
    return left, right


def integrate_frames(events: Dict[str, np.ndarray], T: int, split_by: str, height: int, width: int) -> np.ndarray:
    """Events ``{'t', 'x', 'y', 'p'}`` -> event counts ``[T, 2, height, width]`` (int32)."""
    t, x, y, p = (np.asarray(events[key]) for key in ('t', 'x', 'y', 'p'))
    if not len(t) == len(x) == len(y) == len(p):
        raise ValueError(f"events have unequal lengths: t {len(t)}, x {len(x)}, y {len(y)}, p {len(p)}")
    if split_by == 'time' and len(t) > 1 and np.any(np.diff(t) < 0):
        order = np.argsort(t, kind='stable')
        t, x, y, p = t[order], x[order], y[order], p[order]
    left, right = segment_bounds(t, T, split_by)
    frames = np.zeros((T, 2, height, width), dtype=np.int32)
    if len(t) == 0:
        return frames
    x, y = x.astype(np.int64), y.astype(np.int64)
    if x.min() < 0 or y.min() < 0 or x.max() >= width or y.max() >= height:
        raise ValueError(f"event coordinates x in [{x.min()}, {x.max()}], y in [{y.min()}, {y.max()}] fall "
                         f"outside the {height} x {width} sensor (height x width)")
    frame = np.repeat(np.arange(T, dtype=np.int64), right - left)
    index = ((frame * 2 + (p != 0)) * height + y) * width + x
    frames.reshape(-1)[:] = np.bincount(index, minlength=frames.size)
    return frames


def default_cache_dir() -> Path:
    """``$SNNZOO_CACHE`` else ``$XDG_CACHE_HOME/snnzoo`` else ``~/.cache/snnzoo``, plus ``/frames``."""
    if 'SNNZOO_CACHE' in os.environ:
        base = Path(os.environ['SNNZOO_CACHE'])
    else:
        base = Path(os.environ.get('XDG_CACHE_HOME', Path.home() / '.cache')) / 'snnzoo'
    return base / 'frames'


def _digest(obj, length: int) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:length]


def _smallest_dtype(frames: np.ndarray):
    peak = int(frames.max(initial=0))
    return np.uint8 if peak <= 0xFF else np.uint16 if peak <= 0xFFFF else np.int32


class FrameCache:
    """Frames on disk: ``<directory>/<dataset>-<settings hash>/<name>-<source hash>.npz`` (key ``frames``).

    ``settings`` is every setting that changes the frames (JSON-serialisable); it is written next to the files as
    ``settings.json`` for people. ``get(name, sources, compute)`` returns the cached frames of sample ``name``,
    computing and storing them (atomically) on a miss; ``sources`` are the files the frames come from, whose
    size and modification time enter the file name, so an edited source is never served stale frames.
    A cached file is data: read with ``allow_pickle=False`` and used only when it holds exactly the key ``frames``
    with a count dtype (uint8 / uint16 / int32), no negative count, and the shape ``frame_shape`` (when given);
    anything else is recomputed. Opening the cache removes the temporary files a killed writer left in it.
    """

    def __init__(self, directory: Union[str, Path], dataset: str, settings: dict,
                 frame_shape: Optional[Tuple[int, ...]] = None):
        self.settings = dict(settings, dataset=dataset, format_version=FORMAT_VERSION)
        self.directory = Path(directory) / f"{dataset}-{_digest(self.settings, 16)}"
        self.frame_shape = tuple(frame_shape) if frame_shape is not None else None
        remove_stale_temporaries(self.directory)

    def path(self, name: str, sources: Iterable[Union[str, Path]]) -> Path:
        stamps = []
        for source in sources:
            stat = os.stat(source)
            stamps.append([Path(source).name, stat.st_size, stat.st_mtime_ns])
        return self.directory / f"{name}-{_digest(stamps, 12)}.npz"

    def get(self, name: str, sources: Iterable[Union[str, Path]], compute: Callable[[], np.ndarray]) -> np.ndarray:
        path = self.path(name, sources)
        if path.exists():
            try:
                return self._read(path)
            except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as err:
                warnings.warn(f"frame cache file {path} is unreadable or not frames ({err}); recomputing it")
        frames = compute()
        self._write_settings()
        atomic_write(path, lambda f: np.savez_compressed(f, frames=frames.astype(_smallest_dtype(frames))),
                     durable=False)
        return frames

    def _read(self, path: Path) -> np.ndarray:
        stored = np.load(path, allow_pickle=False)
        if not isinstance(stored, np.lib.npyio.NpzFile):
            raise ValueError("a bare array, not an .npz archive")
        with stored:
            if stored.files != ['frames']:
                raise ValueError(f"expected one array 'frames', found {stored.files}")
            frames = stored['frames']
        if frames.dtype not in (np.uint8, np.uint16, np.int32):
            raise ValueError(f"frames of dtype {frames.dtype}, expected uint8, uint16 or int32 counts")
        if self.frame_shape is not None and frames.shape != self.frame_shape:
            raise ValueError(f"frames of shape {frames.shape}, expected {self.frame_shape}")
        if frames.dtype == np.int32 and frames.size and frames.min() < 0:
            raise ValueError("negative event counts")
        return frames

    def _write_settings(self) -> None:
        path = self.directory / 'settings.json'
        if not path.exists():
            text = json.dumps(self.settings, indent=2, sort_keys=True).encode()
            atomic_write(path, lambda f: f.write(text), durable=False)

    def __repr__(self) -> str:
        return f"FrameCache({str(self.directory)!r})"
