"""Atomic file writes, and the removal of the temporary files that a killed writer leaves behind.

:func:`atomic_write` writes into a temporary sibling ``.<name>.<random>.tmp``, holds an exclusive ``flock`` on it
while writing, fsyncs it and renames it over the target (``os.replace``), so the target is either the old file or the
new one, never half of one. A process killed mid-write leaves its temporary file: :func:`remove_stale_temporaries`
deletes those of this project (``.*.tmp``, ``*.part``) that are older than the current process and that no live
process holds locked; it runs when a training run starts (its checkpoint folder), when a frame cache is opened and
before a weight download.
"""
import errno
import fnmatch
import os
import tempfile
import time
from pathlib import Path
from typing import Callable, Iterable, Union

try:
    import fcntl
except ImportError:  # Windows: no flock; only the age decides
    fcntl = None

__all__ = ['atomic_write', 'remove_stale_temporaries', 'TEMPORARY_PATTERNS', 'is_disk_full']

TEMPORARY_PATTERNS = ('.*.tmp', '*.part')
_STARTED = time.time()  # when snnzoo was imported: a temporary file older than this is no write of ours in flight


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def is_disk_full(error: BaseException) -> bool:
    """An OSError ENOSPC / EDQUOT, or the error torch.save raises when its file write failed on one."""
    while error is not None:
        if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT) or \
                'No space left on device' in str(error):
            return True
        error = error.__cause__ or error.__context__
    return False


def atomic_write(path: Union[str, os.PathLike], write: Callable, binary: bool = True, durable: bool = True) -> Path:
    """Write ``path`` through ``write(file)`` into a locked temporary sibling, then ``os.replace`` it into place.
    ``durable``: fsync the file and the folder first (off for caches, whose lost files are recomputed)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f'.{path.name}.', suffix='.tmp')
    try:
        if fcntl is not None:
            fcntl.flock(fd, fcntl.LOCK_EX)  # released when the file closes: tells the cleaner a writer is alive
        os.chmod(tmp, 0o666 & ~_umask())
        with os.fdopen(fd, 'wb' if binary else 'w') as f:
            write(f)
            f.flush()
            if durable:
                os.fsync(f.fileno())
            os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    if not durable:
        return path
    try:  # make the rename itself durable
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError:
        pass
    return path


def _held_by_live_writer(path: Path) -> bool:
    if fcntl is None:
        return False
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return True  # vanished or unreadable: leave it
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return False
    except OSError:
        return True
    finally:
        os.close(fd)


def remove_stale_temporaries(folder: Union[str, os.PathLike],
                             patterns: Iterable[str] = TEMPORARY_PATTERNS) -> list:
    """Delete the temporary files (``patterns``) in ``folder`` older than this process and held by no live writer;
    returns their paths. A missing folder has none."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    removed = []
    for entry in folder.iterdir():
        if not any(fnmatch.fnmatch(entry.name, p) for p in patterns):
            continue
        try:
            if not entry.is_file() or entry.stat().st_mtime >= _STARTED or _held_by_live_writer(entry):
                continue
            entry.unlink()
        except OSError:
            continue
        removed.append(entry)
    return removed
