"""Readers for event-camera recordings: N-MNIST ``.bin``, AEDAT 2.0 (CIFAR10-DVS), AEDAT 3.1 (DVS128 Gesture).

Every reader returns the events of one file as a dict of equal-length numpy arrays ``{'t', 'x', 'y', 'p'}``
(timestamps in microseconds as int64, pixel coordinates, polarity 0/1), the layout SpikingJelly's readers use,
and raises :class:`EventFileError` naming the file when it is truncated, corrupt (coordinates outside the sensor,
timestamps out of order where the format records events in time order), empty, or in another format.
The readers are vectorised numpy and decode exactly what SpikingJelly 2.0's readers decode
(``spikingjelly.datasets.utils.load_ATIS_bin`` / ``load_aedat_v3``, ``cifar10_dvs._load_origin_data``; the
tests compare them), adding the integrity checks those lack; SpikingJelly is not needed to read files.
"""
import re
import struct
from pathlib import Path
from typing import Dict, Optional, Tuple, Union

import numpy as np

__all__ = ['EventFileError', 'read_nmnist_bin', 'read_aedat2', 'read_aedat31', 'read_gesture_labels']

Events = Dict[str, np.ndarray]
PathLike = Union[str, Path]
NMNIST_SENSOR = (34, 34)


class EventFileError(ValueError):
    """An event or label file is truncated, corrupt or not in the expected format (the message names it)."""

    def __init__(self, path: PathLike, problem: str):
        self.path = Path(path)
        super().__init__(f"{path}: {problem}")


def _events(t, x, y, p) -> Events:
    return {'t': t.astype(np.int64), 'x': x.astype(np.int16), 'y': y.astype(np.int16), 'p': p.astype(np.uint8)}


def _read_bytes(path: PathLike) -> bytes:
    try:
        return Path(path).read_bytes()
    except FileNotFoundError:
        raise FileNotFoundError(f"event file not found: {path}") from None


def read_nmnist_bin(path: PathLike) -> Events:
    """Read an N-MNIST (ATIS) ``.bin`` recording.

    Each event is 5 bytes: x (byte 0), y (byte 1), polarity (bit 7 of byte 2) and a 23-bit microsecond
    timestamp (the low 7 bits of byte 2, then bytes 3 and 4, big-endian). The sensor is 34 x 34.
    """
    raw = np.frombuffer(_read_bytes(path), dtype=np.uint8)
    if raw.size == 0:
        raise EventFileError(path, "the file is empty (an N-MNIST recording holds at least one 5-byte event); "
                                   "it is truncated: restore it from the original archive")
    if raw.size % 5:
        raise EventFileError(path, f"{raw.size} bytes is not a whole number of 5-byte N-MNIST events "
                                   f"({raw.size % 5} bytes left over): the file is truncated or not an N-MNIST .bin")
    ev = raw.reshape(-1, 5).astype(np.uint32)
    t = ((ev[:, 2] & 0x7F) << 16) | (ev[:, 3] << 8) | ev[:, 4]
    _check_events(path, t, ev[:, 0], ev[:, 1], NMNIST_SENSOR)
    return _events(t, ev[:, 0], ev[:, 1], ev[:, 2] >> 7)


def _check_events(path: PathLike, t: np.ndarray, x: np.ndarray, y: np.ndarray, sensor) -> None:
    """Coordinates inside the ``(height, width)`` sensor and timestamps in recording order, else the file is corrupt."""
    if x.size and (x.max() >= sensor[1] or y.max() >= sensor[0]):
        i = int(np.argmax((x >= sensor[1]) | (y >= sensor[0])))
        raise EventFileError(path, f"event {i} at x={int(x[i])}, y={int(y[i])} lies outside the {sensor[0]} x "
                                   f"{sensor[1]} sensor (height x width): the file is corrupt or from another sensor")
    if t.size > 1:
        back = np.flatnonzero(np.diff(t.astype(np.int64)) < 0)
        if back.size:
            i = int(back[0]) + 1
            raise EventFileError(path, f"the timestamp of event {i} ({int(t[i])} us) is earlier than that of the event "
                                       f"before it ({int(t[i - 1])} us): the file is corrupt (events are recorded "
                                       f"in time order)")


def _aedat_version(raw: bytes, path: PathLike) -> str:
    match = re.match(rb'#!AER-DAT(\d+\.\d+)', raw)
    if match is None:
        raise EventFileError(path, "no '#!AER-DAT<version>' first line: not an AEDAT file (or its header is corrupt)")
    return match.group(1).decode()


def read_aedat2(path: PathLike) -> Events:
    """Read an AEDAT 2.0 file (jAER; CIFAR10-DVS) recorded by a DVS128: sensor addresses, not re-oriented.

    After the ``#``-comment header, each event is 8 bytes, big-endian: a uint32 address and an int32 timestamp
    in microseconds. DVS128 address layout: polarity = bit 0, x = bits 1-7, y = bits 8-14 (128 x 128 sensor).
    Returns ``{'t', 'x', 'y', 'p'}`` with the address fields as they are (CIFAR10-DVS re-orients them, see
    :func:`snnzoo.data.event_datasets.CIFAR10DVS`).
    """
    raw = _read_bytes(path)
    version = _aedat_version(raw, path)
    if version != '2.0':
        hint = " (use read_aedat31)" if version.startswith('3') else ""
        raise EventFileError(path, f"AEDAT {version} file, but read_aedat2 reads AEDAT 2.0{hint}")
    start = 0
    while raw[start:start + 1] == b'#':
        end = raw.find(b'\n', start)
        if end < 0:
            raise EventFileError(path, "the header has no end of line: the file is truncated inside its header")
        start = end + 1
    body = len(raw) - start
    if body == 0:
        raise EventFileError(path, "the file holds a header and no events: the recording is empty or was truncated "
                                   "after its header; restore it from the original archive")
    if body % 8:
        raise EventFileError(path, f"{body} bytes of events after the header is not a whole number of 8-byte "
                                   f"AEDAT 2.0 events ({body % 8} bytes left over): the file is truncated or corrupt")
    words = np.frombuffer(raw, dtype='>u4', offset=start).reshape(-1, 2)
    address = words[:, 0]
    return _events(words[:, 1], (address >> 1) & 0x7F, (address >> 8) & 0x7F, address & 1)


_PACKET_HEADER = struct.Struct('<hhiiiiii')  # type, source, size, ts_offset, ts_overflow, capacity, number, valid
_POLARITY_EVENT = 1


def read_aedat31(path: PathLike, sensor_size: Optional[Tuple[int, int]] = None) -> Events:
    """Read the polarity events of an AEDAT 3.1 file (cAER / DV; DVS128 Gesture).

    After the ASCII header (ended by ``#!END-HEADER``) come packets: a 28-byte little-endian header
    (int16 event type, int16 source, int32 event size, int32 timestamp offset, int32 timestamp overflow,
    int32 capacity, int32 number, int32 valid) and ``capacity * size`` bytes of events. A polarity event
    (type 1) is 8 bytes: uint32 data (bit 0 valid, bit 1 polarity, bits 2-16 y, bits 17-31 x) and an int32
    timestamp; the full timestamp is ``overflow << 31 | timestamp`` microseconds. Other packet types are
    skipped; of a polarity packet, the first ``number`` events whose valid bit is set are kept. Timestamps must not
    decrease, and coordinates must lie inside ``sensor_size`` (height, width) when given.
    """
    raw = _read_bytes(path)
    version = _aedat_version(raw, path)
    if not version.startswith('3'):
        raise EventFileError(path, f"AEDAT {version} file, but read_aedat31 reads AEDAT 3.x"
                                   + (" (use read_aedat2)" if version == '2.0' else ""))
    marker = raw.find(b'#!END-HEADER')
    if marker < 0:
        raise EventFileError(path, "no '#!END-HEADER' line: the file is truncated inside its header or corrupt")
    pos = raw.find(b'\n', marker)
    if pos < 0:
        raise EventFileError(path, "the header has no end of line: the file is truncated inside its header")
    pos += 1
    data, stamps = [], []
    while pos < len(raw):
        if len(raw) - pos < _PACKET_HEADER.size:
            raise EventFileError(path, f"truncated packet header at byte {pos} "
                                       f"({len(raw) - pos} of {_PACKET_HEADER.size} bytes)")
        e_type, _, size, ts_offset, overflow, capacity, number, _ = _PACKET_HEADER.unpack_from(raw, pos)
        if size <= 0 or capacity < 0 or not 0 <= number <= capacity or overflow < 0:
            raise EventFileError(path, f"corrupt packet header at byte {pos}: event size {size}, capacity "
                                       f"{capacity}, number {number}, timestamp overflow {overflow}")
        payload = pos + _PACKET_HEADER.size
        end = payload + capacity * size
        if end > len(raw):
            raise EventFileError(path, f"truncated packet at byte {pos}: {capacity} events of {size} bytes need "
                                       f"{capacity * size} bytes, {len(raw) - payload} are left")
        if e_type == _POLARITY_EVENT:
            if size != 8 or ts_offset != 4:
                raise EventFileError(path, f"polarity packet at byte {pos} has {size}-byte events with the "
                                           f"timestamp at offset {ts_offset}; AEDAT 3.1 has 8 and 4")
            words = np.frombuffer(raw, dtype='<u4', count=2 * number, offset=payload).reshape(-1, 2)
            valid = (words[:, 0] & 1).astype(bool)
            data.append(words[valid, 0])
            stamps.append(words[valid, 1].astype(np.int64) | (np.int64(overflow) << 31))
        pos = end
    word = np.concatenate(data) if data else np.zeros(0, np.uint32)
    if word.size == 0:
        raise EventFileError(path, "the file holds a header and no polarity events: the recording is empty or was "
                                   "truncated after its header; restore it from the original archive")
    t = np.concatenate(stamps)
    x, y = (word >> 17) & 0x7FFF, (word >> 2) & 0x7FFF
    _check_events(path, t, x, y, sensor_size or (0x8000, 0x8000))
    return _events(t, x, y, (word >> 1) & 1)


def read_gesture_labels(path: PathLike, num_classes: int = 11) -> np.ndarray:
    """Read a DVS128 Gesture ``userXX_<lighting>_labels.csv``: ``[N, 3]`` int64 rows (class, start_us, end_us).

    The file has a header line ``class,startTime_usec,endTime_usec``; classes are 1-based (1..11) as in the file.
    """
    try:
        lines = Path(path).read_text().strip().splitlines()
    except FileNotFoundError:
        raise FileNotFoundError(f"label file not found: {path}") from None
    except UnicodeDecodeError:
        raise EventFileError(path, "not a text file: expected a CSV 'class,startTime_usec,endTime_usec'") from None
    if not lines or not lines[0].lower().startswith('class'):
        raise EventFileError(path, "no 'class,startTime_usec,endTime_usec' header line: not a DVS128 Gesture "
                                   "label file, or it is truncated")
    rows = []
    for number, line in enumerate(lines[1:], start=2):
        fields = line.split(',')
        try:
            row = [int(field) for field in fields]
        except ValueError:
            row = []
        if len(row) != 3 or not 1 <= row[0] <= num_classes:
            raise EventFileError(path, f"line {number} {line!r} is not 'class,start_us,end_us' with a class in "
                                       f"1..{num_classes}")
        rows.append(row)
    if not rows:
        raise EventFileError(path, "no label rows after the header: the file is truncated")
    return np.asarray(rows, dtype=np.int64)
