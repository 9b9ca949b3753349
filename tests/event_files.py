"""Test-only writers of event files in the exact AEDAT 2.0 (jAER, DVS128 addresses) and AEDAT 3.1 (cAER) container
formats, filled by the tests with real N-MNIST events (no real CIFAR10-DVS or DVS128 Gesture recording is available)."""
from pathlib import Path

import numpy as np

from snnzoo.data.events import _PACKET_HEADER

__all__ = ['write_aedat2', 'write_aedat31', 'AEDAT31_HEADER']


def write_aedat2(path: Path, x, y, p, t) -> None:
    """AEDAT 2.0 (jAER) with DVS128 addresses: ``#`` header lines, then big-endian (uint32 address, int32 t)."""
    address = (np.asarray(y, np.uint32) << 8) | (np.asarray(x, np.uint32) << 1) | np.asarray(p, np.uint32)
    body = np.stack([address, np.asarray(t, np.uint32)], axis=1).astype('>u4').tobytes()
    header = (b"#!AER-DAT2.0\r\n# This is a raw AE data file - do not edit\r\n"
              b"# Data format is int32 address, int32 timestamp (8 bytes total), repeated for each event\r\n"
              b"# Timestamps tick is 1 us\r\n# created Thu Jan 01 00:00:00 UTC 2015\r\n")
    path.write_bytes(header + body)


def _packet(e_type, events: np.ndarray, overflow=0, capacity=None, valid=None) -> bytes:
    """One AEDAT 3.1 packet: 28-byte little-endian header + ``capacity`` 8-byte events (``events``: [n, 2] uint32)."""
    number = len(events)
    capacity = number if capacity is None else capacity
    padded = np.zeros((capacity, 2), dtype='<u4')
    padded[:number] = events
    valid = number if valid is None else valid
    return _PACKET_HEADER.pack(e_type, 1, 8, 4, overflow, capacity, number, valid) + padded.tobytes()


def _polarity_words(x, y, p, t, valid=1):
    data = (np.asarray(x, np.uint32) << 17) | (np.asarray(y, np.uint32) << 2) | (np.asarray(p, np.uint32) << 1) | valid
    return np.stack([data, np.asarray(t, np.uint32) & 0x7FFFFFFF], axis=1)


AEDAT31_HEADER = (b"#!AER-DAT3.1\r\n#Format: RAW\r\n#Source 1: DVS128\r\n"
                  b"#Start-Time: 2017-01-01 00:00:00 (TZ+0000)\r\n#!END-HEADER\r\n")


def write_aedat31(path: Path, x, y, p, t, packet_events=1000) -> None:
    """AEDAT 3.1 (cAER) polarity packets of ``packet_events`` events each; ``t >= 2**31`` uses the overflow field."""
    t = np.asarray(t, np.int64)
    packets = []
    for start in range(0, len(t), packet_events):
        part = slice(start, start + packet_events)
        overflow = int(t[start] >> 31)
        assert np.all(t[part] >> 31 == overflow)
        packets.append(_packet(1, _polarity_words(x[part], y[part], p[part], t[part]), overflow))
    path.write_bytes(AEDAT31_HEADER + b''.join(packets))
