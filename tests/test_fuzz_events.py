"""Seeded, bounded fuzzing of the event-file readers on real recordings.

Real N-MNIST recordings (``../shared/data/nmnist-small.tar.gz``) and AEDAT 2.0 / 3.1 files written from their events
(no real CIFAR10-DVS or DVS128 Gesture recording is available here) are mutated: bit flips, truncation, insertions,
deletions, duplicated spans, garbage headers and overwritten header words. Every case must either decode to valid
events (equal lengths, coordinates inside the sensor, polarity 0/1, timestamps >= 0 and, where the format records
events in time order, non-decreasing) or raise :class:`snnzoo.data.EventFileError` naming the file, within a
time limit per case (no hang).
"""
import signal
import tarfile

import numpy as np
import pytest

from event_files import write_aedat2, write_aedat31
from snnzoo.data import EventFileError, read_aedat2, read_aedat31, read_nmnist_bin

CASES_PER_FORMAT = 200
SECONDS_PER_CASE = 5
# reader, sensor (height, width), whether timestamps must not decrease
FORMATS = {
    'nmnist': (read_nmnist_bin, (34, 34), True),
    'aedat2': (read_aedat2, (128, 128), False),
    'aedat31': (lambda path: read_aedat31(path, sensor_size=(128, 128)), (128, 128), True),
}


@pytest.fixture(scope='module')
def originals(data_dir, tmp_path_factory) -> dict:
    """Three real N-MNIST recordings per format, as bytes, and the same events in AEDAT 2.0 and 3.1 containers."""
    recordings = []
    with tarfile.open(data_dir / 'nmnist-small.tar.gz', 'r|gz') as tar:
        for member in tar:
            if member.isfile() and member.name.endswith('.bin') and '/Train/' in member.name:
                recordings.append(tar.extractfile(member).read())
                if len(recordings) == 3:
                    break
    folder = tmp_path_factory.mktemp('fuzz_originals')
    out = {'nmnist': recordings, 'aedat2': [], 'aedat31': []}
    for i, raw in enumerate(recordings):
        (folder / f'{i}.bin').write_bytes(raw)
        ev = read_nmnist_bin(folder / f'{i}.bin')
        write_aedat2(folder / f'{i}.aedat2', ev['x'], ev['y'], ev['p'], ev['t'])
        write_aedat31(folder / f'{i}.aedat31', ev['x'], ev['y'], ev['p'], ev['t'], packet_events=700)
        out['aedat2'].append((folder / f'{i}.aedat2').read_bytes())
        out['aedat31'].append((folder / f'{i}.aedat31').read_bytes())
    return out


def _mutate(data: bytes, rng: np.random.Generator) -> tuple:
    """One random mutation of ``data``: ``(name, mutated bytes)``."""
    buf = bytearray(data)
    kind = rng.choice(['bitflip', 'truncate', 'insert', 'delete', 'duplicate', 'garbage_header', 'header_word'])
    n = len(buf)
    if kind == 'bitflip':
        for pos in rng.integers(0, n, size=rng.integers(1, 17)):
            buf[pos] ^= 1 << int(rng.integers(0, 8))
    elif kind == 'truncate':
        del buf[int(rng.integers(0, n)):]
    elif kind == 'insert':
        pos = int(rng.integers(0, n + 1))
        buf[pos:pos] = rng.integers(0, 256, size=rng.integers(1, 65), dtype=np.uint8).tobytes()
    elif kind == 'delete':
        pos = int(rng.integers(0, n))
        del buf[pos:pos + int(rng.integers(1, 65))]
    elif kind == 'duplicate':
        pos = int(rng.integers(0, n))
        buf[pos:pos] = buf[pos:pos + int(rng.integers(1, 257))]
    elif kind == 'garbage_header':
        size = int(rng.integers(1, 201))
        buf[:size] = rng.integers(0, 256, size=size, dtype=np.uint8).tobytes()
    else:  # a 4-byte word near the start (headers, packet headers) set to an extreme or random value
        pos = int(rng.integers(0, max(1, min(n, 2048) - 4))) & ~3
        word = rng.choice([0, 1, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF, int(rng.integers(0, 2 ** 32))])
        buf[pos:pos + 4] = int(word).to_bytes(4, 'little')
    return str(kind), bytes(buf)


def _timeout(signum, frame):
    raise TimeoutError(f"an event reader ran for more than {SECONDS_PER_CASE} s")


def _check_valid(events: dict, sensor: tuple, ordered: bool) -> None:
    t, x, y, p = (events[k] for k in 'txyp')
    assert len(t) == len(x) == len(y) == len(p) > 0
    assert t.dtype == np.int64 and (t >= 0).all()
    assert (x >= 0).all() and (x < sensor[1]).all() and (y >= 0).all() and (y < sensor[0]).all()
    assert set(np.unique(p).tolist()) <= {0, 1}
    if ordered:
        assert (np.diff(t) >= 0).all()


@pytest.mark.parametrize('fmt', sorted(FORMATS))
def test_mutated_event_files_decode_validly_or_raise_the_named_error(originals, fmt, tmp_path):
    reader, sensor, ordered = FORMATS[fmt]
    rng = np.random.default_rng(sorted(FORMATS).index(fmt))
    outcomes = {'decoded': 0, 'refused': 0}
    previous = signal.signal(signal.SIGALRM, _timeout)
    try:
        for case in range(CASES_PER_FORMAT):
            kind, data = _mutate(originals[fmt][case % len(originals[fmt])], rng)
            path = tmp_path / f'case{case}.{fmt}'
            path.write_bytes(data)
            signal.setitimer(signal.ITIMER_REAL, SECONDS_PER_CASE)
            try:
                events = reader(path)
            except EventFileError as e:
                assert str(path) in str(e), f"case {case} ({kind}): the error does not name the file: {e}"
                outcomes['refused'] += 1
            else:
                try:
                    _check_valid(events, sensor, ordered)
                except AssertionError as e:
                    raise AssertionError(f"case {case} ({kind}) of {fmt} decoded to invalid events") from e
                outcomes['decoded'] += 1
            finally:
                signal.setitimer(signal.ITIMER_REAL, 0)
    finally:
        signal.signal(signal.SIGALRM, previous)
    # the mutations reach both sides: some files still decode, others are refused
    assert outcomes['decoded'] > 0 and outcomes['refused'] > 0, outcomes
