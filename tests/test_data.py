"""snnzoo.data: readers on real files from ../shared/data, frame integration against SpikingJelly, the frame cache,
the standard splits, clear errors for truncated / corrupt files, transforms.

No real CIFAR10-DVS (AEDAT 2.0) or DVS128 Gesture (AEDAT 3.1) recording is available here, so those tests write
files in the exact container formats (headers, packet layout, DVS128 / DAVIS address bit layouts) filled with real
N-MNIST events, and check that the decoded events round-trip exactly and agree with SpikingJelly's readers.
"""
import gzip
import math
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from snnzoo.data import (NMNIST, DVS128Gesture, EventFileError, FrameCache, IdxFileError, build_dataset,
                         build_event_transforms, build_transforms, dataset_info, digits_split, integrate_frames,
                         read_aedat2, read_aedat31, read_gesture_labels, read_idx, read_nmnist_bin)
from snnzoo.data.event_datasets import read_cifar10_dvs

from event_files import AEDAT31_HEADER, _packet, _polarity_words, write_aedat2, write_aedat31  # noqa: E402

sj_utils = pytest.importorskip('spikingjelly.datasets.utils')

CIFAR10 = ('airplane', 'automobile', 'bird', 'cat', 'deer', 'dog', 'frog', 'horse', 'ship', 'truck')


# ---------------------------------------------------------------- real data from ../shared/data (conftest's data_dir)

@pytest.fixture(scope='module')
def sample_bin(data_dir) -> Path:
    return data_dir / 'events' / 'sample_nmnist.bin'


def _extract(archive: Path, dest: Path, keep) -> Path:
    """Extract the members of ``archive`` for which ``keep(name)`` holds (streaming, one pass)."""
    with tarfile.open(archive, 'r|gz') as tar:
        for member in tar:
            if member.isfile() and keep(member.name):
                tar.extract(member, dest, filter='data')
    return dest


@pytest.fixture(scope='module')
def nmnist_root(data_dir, tmp_path_factory) -> Path:
    """The first 3 training and 2 test recordings of each digit from nmnist-small.tar.gz."""
    wanted, taken = {'Train': 3, 'Test': 2}, {}

    def keep(name):
        parts = name.split('/')
        if len(parts) != 4 or not parts[3].endswith('.bin'):
            return False
        taken[parts[1], parts[2]] = taken.get((parts[1], parts[2]), 0) + 1
        return taken[parts[1], parts[2]] <= wanted[parts[1]]

    return _extract(data_dir / 'nmnist-small.tar.gz', tmp_path_factory.mktemp('nmnist'), keep) / 'nmnist-small'


@pytest.fixture(scope='module')
def recordings(nmnist_root):
    """A few real N-MNIST recordings (path, events), one per digit."""
    return [(f, read_nmnist_bin(f)) for f in (sorted((nmnist_root / 'Train' / str(d)).glob('*.bin'))[0]
                                             for d in range(10))]


@pytest.fixture(scope='module')
def cifar_jpg_root(data_dir, tmp_path_factory) -> Path:
    """Images 0000-0002 of every class of cifar10-jpg, train and test."""
    def keep(name):
        parts = name.split('/')
        return len(parts) == 4 and parts[3] in ('0000.jpg', '0001.jpg', '0002.jpg')

    return _extract(data_dir / 'cifar10-jpg.tar.gz', tmp_path_factory.mktemp('cifar'), keep) / 'cifar10-jpg'


def test_nmnist_sample_decoded_exactly(sample_bin):
    ev = read_nmnist_bin(sample_bin)
    assert len(ev['t']) == 4325 == sample_bin.stat().st_size // 5
    assert ev['x'].min() == 0 and ev['x'].max() == 33 and ev['y'].min() == 0 and ev['y'].max() == 33
    assert set(np.unique(ev['p'])) == {0, 1}
    assert np.all(np.diff(ev['t']) >= 0)
    raw = np.fromfile(sample_bin, dtype=np.uint8).reshape(-1, 5).astype(np.int64)  # hand decoding, event by event
    assert np.array_equal(ev['x'], raw[:, 0]) and np.array_equal(ev['y'], raw[:, 1])
    assert np.array_equal(ev['p'], raw[:, 2] // 128)
    assert np.array_equal(ev['t'], (raw[:, 2] % 128) * 65536 + raw[:, 3] * 256 + raw[:, 4])
    ref = sj_utils.load_ATIS_bin(str(sample_bin))
    for key in 'txyp':
        assert np.array_equal(ev[key], ref[key]), key


@pytest.mark.parametrize('split_by', ['number', 'time'])
@pytest.mark.parametrize('T', [1, 4, 10, 16])
def test_integrate_frames_equals_spikingjelly(sample_bin, split_by, T):
    ev = read_nmnist_bin(sample_bin)
    ours = integrate_frames(ev, T, split_by, 34, 34)
    ref = sj_utils.integrate_events_by_fixed_frames_number(sj_utils.load_ATIS_bin(str(sample_bin)),
                                                           split_by, T, 34, 34)
    assert ours.shape == (T, 2, 34, 34) and ours.sum() == 4325
    np.testing.assert_array_equal(ours, ref)


def test_integrate_frames_edge_cases():
    ev = {'t': np.array([0, 0, 0]), 'x': np.array([0, 1, 2]), 'y': np.zeros(3, int), 'p': np.array([0, 1, 1])}
    frames = integrate_frames(ev, 4, 'time', 1, 3)  # dt = 0: SpikingJelly fails; we put all events in the last frame
    assert frames[:3].sum() == 0 and frames[3].sum() == 3
    empty = {key: np.zeros(0, int) for key in 'txyp'}
    assert integrate_frames(empty, 2, 'number', 2, 2).sum() == 0
    with pytest.raises(ValueError, match="outside the 1 x 2 sensor"):
        integrate_frames(ev, 1, 'number', 1, 2)
    with pytest.raises(ValueError, match="split_by"):
        integrate_frames(ev, 1, 'count', 1, 3)


def test_nmnist_dataset(nmnist_root, tmp_path):
    train = build_dataset('nmnist', nmnist_root, 'train', T=8, split_by='time', cache_dir=tmp_path)
    test = NMNIST(nmnist_root, 'test', T=8, cache_dir=tmp_path)
    assert len(train) == 30 and len(test) == 20
    assert train.targets == [d for d in range(10) for _ in range(3)]
    frames, label = train[4]
    assert frames.dtype == torch.float32 and frames.shape == (8, 2, 34, 34) and label == 1
    ref = sj_utils.integrate_events_by_fixed_frames_number(
        sj_utils.load_ATIS_bin(str(train.samples[4].sources[0])), 'time', 8, 34, 34)
    np.testing.assert_array_equal(frames.numpy(), ref)
    batch, labels = next(iter(torch.utils.data.DataLoader(test, batch_size=5)))
    assert batch.shape == (5, 8, 2, 34, 34) and labels.tolist() == [0, 0, 1, 1, 2]
    info = dataset_info('nmnist')
    assert (info.kind, info.num_classes, info.input_size) == ('event', 10, (2, 34, 34))


def test_aedat2_round_trip_and_spikingjelly(sample_bin, tmp_path):
    from spikingjelly.datasets.cifar10_dvs import _load_origin_data
    ev = read_nmnist_bin(sample_bin)
    path = tmp_path / 'cifar10_airplane_0.aedat'
    write_aedat2(path, ev['x'], ev['y'], ev['p'], ev['t'])
    decoded = read_aedat2(path)
    for key in 'txyp':
        np.testing.assert_array_equal(decoded[key], ev[key], err_msg=key)
    sj = _load_origin_data(str(path))  # SpikingJelly's CIFAR10-DVS reading: re-oriented events
    ours = read_cifar10_dvs(path)
    for key in 'txyp':
        np.testing.assert_array_equal(ours[key], sj[key], err_msg=key)


def test_aedat31_round_trip_and_spikingjelly(sample_bin, tmp_path):
    ev = read_nmnist_bin(sample_bin)
    path = tmp_path / 'user01_fluorescent.aedat'
    write_aedat31(path, ev['x'], ev['y'], ev['p'], ev['t'], packet_events=500)
    decoded = read_aedat31(path)
    for key in 'txyp':
        np.testing.assert_array_equal(decoded[key], ev[key], err_msg=key)
    ref = sj_utils.load_aedat_v3(str(path))
    for key in 'txyp':
        np.testing.assert_array_equal(decoded[key], ref[key], err_msg=key)


def test_aedat31_overflow_special_packets_and_invalid_events(sample_bin, tmp_path):
    ev = read_nmnist_bin(sample_bin)
    n = len(ev['t'])
    half = n // 2
    words = _polarity_words(ev['x'], ev['y'], ev['p'], ev['t'])
    invalid = _polarity_words([5], [6], [1], [7], valid=0)
    path = tmp_path / 'trial.aedat'
    path.write_bytes(AEDAT31_HEADER
                     + _packet(0, np.array([[0x12345678, 1]], dtype=np.uint32))     # a special-event packet
                     + _packet(1, np.concatenate([words[:half], invalid]), capacity=half + 3, valid=half)
                     + _packet(1, words[half:], overflow=1))                         # timestamps past 2**31 us
    decoded = read_aedat31(path)
    expected_t = np.concatenate([ev['t'][:half], ev['t'][half:] + 2 ** 31])
    np.testing.assert_array_equal(decoded['t'], expected_t)
    for key in 'xyp':
        np.testing.assert_array_equal(decoded[key], ev[key], err_msg=key)


# ---------------------------------------------------------------- CIFAR10-DVS and DVS128 Gesture data sets

@pytest.fixture(scope='module')
def cifar10_dvs_root(recordings, tmp_path_factory) -> Path:
    """CIFAR10-DVS layout; each class holds recordings 0-5 and 100-105 (N-MNIST events, 600 each)."""
    root = tmp_path_factory.mktemp('cifar10dvs')
    for label, cls in enumerate(CIFAR10):
        (root / cls).mkdir()
        ev = recordings[label][1]
        for i in [*range(6), *range(100, 106)]:
            part = slice(i % 6 * 100, i % 6 * 100 + 600)
            write_aedat2(root / cls / f"cifar10_{cls}_{i}.aedat", ev['x'][part], ev['y'][part], ev['p'][part],
                         ev['t'][part])
    return root


def test_cifar10_dvs_splits_and_frames(cifar10_dvs_root, tmp_path):
    from spikingjelly.datasets.cifar10_dvs import _load_origin_data
    train = build_dataset('cifar10_dvs', cifar10_dvs_root, 'train', T=4, cache_dir=tmp_path)
    test = build_dataset('cifar10_dvs', cifar10_dvs_root, 'test', T=4, cache_dir=tmp_path)
    # 9:1 per class in SpikingJelly's (string-sorted) file order: ceil(12 * 0.9) = 11 train, the last name tests
    names = sorted(f"cifar10_airplane_{i}" for i in [*range(6), *range(100, 106)])
    assert len(train) == 110 and len(test) == 10
    assert [s.name.split('/')[1] for s in train.samples[:11]] == names[:11]
    assert [s.name for s in test.samples[:2]] == ['airplane/cifar10_airplane_5', 'automobile/cifar10_automobile_5']
    assert test.targets == list(range(10))
    tebn = build_dataset('cifar10_dvs', cifar10_dvs_root, 'test', T=4, cache_dir=tmp_path, split_protocol='tebn')
    assert len(tebn) == 60 and all(int(s.name.rsplit('_', 1)[1]) < 100 for s in tebn.samples)
    frames, label = train[13]
    path = train.samples[13].sources[0]
    ref = sj_utils.integrate_events_by_fixed_frames_number(_load_origin_data(str(path)), 'number', 4, 128, 128)
    assert frames.shape == (4, 2, 128, 128) and label == 1
    np.testing.assert_array_equal(frames.numpy(), ref)


@pytest.fixture(scope='module')
def gesture_root(recordings, tmp_path_factory) -> Path:
    """DvsGesture layout: two trials (users 01 and 24), each the 10 recordings one after another, labelled by the
    CSV with the digit + 1 as the gesture class (two rows of class 3 in user24 as in some real files)."""
    folder = tmp_path_factory.mktemp('gesture') / 'DvsGesture'
    folder.mkdir()
    (folder / 'trials_to_train.txt').write_text("user01_fluorescent.aedat\n")
    (folder / 'trials_to_test.txt').write_text("user24_led.aedat\n\n")
    for trial, classes in (('user01_fluorescent', list(range(1, 11))), ('user24_led', [3, 1, 3, 11, 5])):
        parts, rows, offset = [], ["class,startTime_usec,endTime_usec"], 10_000_000
        for cls, (_, ev) in zip(classes, recordings):
            parts.append({key: ev[key] + (offset if key == 't' else 0) for key in 'txyp'})
            rows.append(f"{cls},{offset},{offset + int(ev['t'][-1]) + 1}")
            offset += 1_000_000
        events = {key: np.concatenate([part[key] for part in parts]) for key in 'txyp'}
        write_aedat31(folder / f"{trial}.aedat", events['x'], events['y'], events['p'], events['t'])
        (folder / f"{trial}_labels.csv").write_text("\n".join(rows) + "\n")
    return folder.parent


def test_dvs128_gesture_samples_and_frames(gesture_root, recordings, tmp_path):
    train = build_dataset('dvs128_gesture', gesture_root, 'train', T=5, split_by='time', cache_dir=tmp_path)
    test = build_dataset('dvs128_gesture', gesture_root, 'test', T=5, split_by='time', cache_dir=tmp_path)
    assert len(train) == 10 and len(test) == 5
    assert train.targets == list(range(10))
    assert [s.name for s in test.samples] == ['0/user24_led_0', '2/user24_led_0', '2/user24_led_1',
                                              '4/user24_led_0', '10/user24_led_0']
    for index in (0, 7):
        frames, label = train[index]
        ref = sj_utils.integrate_events_by_fixed_frames_number(recordings[index][1], 'time', 5, 128, 128)
        assert label == index
        np.testing.assert_array_equal(frames.numpy(), ref)
    frames, label = test[4]  # the 4th recording of user24, labelled 11 ("other gestures")
    ref = sj_utils.integrate_events_by_fixed_frames_number(recordings[3][1], 'time', 5, 128, 128)
    np.testing.assert_array_equal(frames.numpy(), ref)
    assert label == 10
    sj_order = DVS128Gesture(gesture_root, 'test', T=5, cache_dir=tmp_path, label_order='spikingjelly')
    assert sorted(sj_order.targets) == [0, 2, 3, 3, 5]  # class folders '0','1','10','2',...: '10' -> 2, '2' -> 3
    assert dataset_info('dvs128_gesture').num_classes == 11


# ---------------------------------------------------------------- the frame cache

def test_frame_cache_reused_for_equal_settings_only(nmnist_root, tmp_path, monkeypatch):
    import snnzoo.data.event_datasets as event_datasets
    calls = []
    real = event_datasets.integrate_frames
    monkeypatch.setattr(event_datasets, 'integrate_frames', lambda *a: calls.append(a[1:]) or real(*a))
    first = NMNIST(nmnist_root, 'test', T=4, split_by='number', cache_dir=tmp_path)
    first.prepare()
    assert len(calls) == 20
    files = sorted(tmp_path.rglob('*.npz'))
    assert len(files) == 20 and not list(tmp_path.rglob('*.tmp'))
    again = NMNIST(nmnist_root, 'test', T=4, split_by='number', cache_dir=tmp_path)
    np.testing.assert_array_equal(again[3][0].numpy(), first.frames(3))
    again.prepare()
    assert len(calls) == 20  # equal settings: everything came from the cache
    for T, split_by in ((5, 'number'), (4, 'time')):
        changed = NMNIST(nmnist_root, 'test', T=T, split_by=split_by, cache_dir=tmp_path)
        assert changed.cache.directory != first.cache.directory
        frames, _ = changed[3]
        assert calls[-1] == (T, split_by, 34, 34) and frames.shape[0] == T
        ref = sj_utils.integrate_events_by_fixed_frames_number(
            sj_utils.load_ATIS_bin(str(changed.samples[3].sources[0])), split_by, T, 34, 34)
        np.testing.assert_array_equal(frames.numpy(), ref)
    assert len(calls) == 22


def test_frame_cache_source_change_corrupt_file_and_atomic_write(sample_bin, tmp_path, monkeypatch):
    source = tmp_path / 'rec.bin'
    shutil.copy(sample_bin, source)
    cache = FrameCache(tmp_path / 'cache', 'test', {'T': 2})
    frames = cache.get('rec', [source], lambda: integrate_frames(read_nmnist_bin(source), 2, 'number', 34, 34))
    assert cache.get('rec', [source], lambda: pytest.fail("recomputed")).tolist() == frames.tolist()
    assert (cache.directory / 'settings.json').is_file()
    source.write_bytes(sample_bin.read_bytes()[:-500])  # an edited source file is never served stale frames
    fresh = cache.get('rec', [source], lambda: integrate_frames(read_nmnist_bin(source), 2, 'number', 34, 34))
    assert fresh.sum() == 4325 - 100
    cache.path('rec', [source]).write_bytes(b'not a zip file')
    with pytest.warns(UserWarning, match="unreadable"):
        assert cache.get('rec', [source], lambda: fresh).sum() == 4225

    def crash(file, **arrays):
        file.write(b'partial')
        raise OSError("disk full")

    monkeypatch.setattr(np, 'savez_compressed', crash)
    with pytest.raises(OSError, match="disk full"):
        cache.get('other', [source], lambda: fresh)
    assert not cache.path('other', [source]).exists() and not list(cache.directory.glob('*.tmp'))


# ---------------------------------------------------------------- truncated and corrupt files

def test_truncated_and_corrupt_event_files_name_the_file(sample_bin, recordings, tmp_path):
    data = sample_bin.read_bytes()
    truncated = tmp_path / 'truncated.bin'
    truncated.write_bytes(data[:-2])
    with pytest.raises(EventFileError, match=r"truncated\.bin.*not a whole number of 5-byte"):
        read_nmnist_bin(truncated)
    (tmp_path / 'empty.bin').write_bytes(b'')
    with pytest.raises(EventFileError, match=r"empty\.bin.*empty"):
        read_nmnist_bin(tmp_path / 'empty.bin')

    ev = recordings[0][1]
    aedat2 = tmp_path / 'a2.aedat'
    write_aedat2(aedat2, ev['x'], ev['y'], ev['p'], ev['t'])
    aedat2.write_bytes(aedat2.read_bytes()[:-3])
    with pytest.raises(EventFileError, match=r"a2\.aedat.*not a whole number of 8-byte"):
        read_aedat2(aedat2)
    aedat2.write_bytes(b'\x00\x01' * 40)
    with pytest.raises(EventFileError, match=r"a2\.aedat.*not an AEDAT file"):
        read_aedat2(aedat2)

    aedat3 = tmp_path / 'a3.aedat'
    write_aedat31(aedat3, ev['x'], ev['y'], ev['p'], ev['t'])
    full = aedat3.read_bytes()
    aedat3.write_bytes(full[:-10])
    with pytest.raises(EventFileError, match=r"a3\.aedat.*truncated packet at byte"):
        read_aedat31(aedat3)
    aedat3.write_bytes(full[:len(AEDAT31_HEADER) + 28 + 8000 + 5])
    with pytest.raises(EventFileError, match=r"a3\.aedat.*truncated packet header at byte"):
        read_aedat31(aedat3)
    aedat3.write_bytes(AEDAT31_HEADER[:40])
    with pytest.raises(EventFileError, match=r"a3\.aedat.*END-HEADER"):
        read_aedat31(aedat3)
    with pytest.raises(EventFileError, match=r"a2\.aedat.*not an AEDAT"):
        read_aedat31(aedat2)

    labels = tmp_path / 'user01_led_labels.csv'
    labels.write_text("class,startTime_usec,endTime_usec\n1,10,20\n12,30,40\n")
    with pytest.raises(EventFileError, match=r"user01_led_labels\.csv.*line 3"):
        read_gesture_labels(labels)
    labels.write_text("class,startTime_usec,endTime_usec\n1,10,20\n4,30,40\n")
    assert read_gesture_labels(labels).tolist() == [[1, 10, 20], [4, 30, 40]]


def test_dataset_errors_name_the_file(nmnist_root, tmp_path):
    root = tmp_path / 'nmnist'
    shutil.copytree(nmnist_root, root)
    victim = sorted((root / 'Test' / '1').glob('*.bin'))[0]
    victim.write_bytes(victim.read_bytes()[:-1])
    dataset = NMNIST(root, 'test', T=4, cache=False)
    with pytest.raises(EventFileError, match=victim.name):
        dataset[2]
    outside = bytearray(victim.read_bytes()[:-4])
    outside[0] = 200  # x = 200 on a 34 x 34 sensor
    victim.write_bytes(bytes(outside))
    with pytest.raises(EventFileError, match=rf"{victim.name}.*outside the 34 x 34 sensor"):
        dataset[2]
    with pytest.raises(FileNotFoundError, match="Train/<digit>"):
        NMNIST(tmp_path / 'nmnist' / 'Test', 'train')
    with pytest.raises(ValueError, match="did you mean nmnist"):
        build_dataset('nmist', root)


# ---------------------------------------------------------------- Fashion-MNIST

def test_fashion_mnist_idx_matches_torchvision(data_dir, tmp_path):
    from torchvision.datasets.mnist import read_image_file, read_label_file
    folder = data_dir / 'fashion-mnist'
    raw = tmp_path / 'FashionMNIST' / 'raw'
    raw.mkdir(parents=True)
    for stem in ('t10k-images-idx3-ubyte', 't10k-labels-idx1-ubyte'):
        (raw / stem).write_bytes(gzip.decompress((folder / f"{stem}.gz").read_bytes()))
    images, labels = read_idx(folder / 't10k-images-idx3-ubyte.gz'), read_idx(folder / 't10k-labels-idx1-ubyte.gz')
    assert images.shape == (10000, 28, 28) and images.dtype == torch.uint8
    assert torch.equal(images, read_image_file(str(raw / 't10k-images-idx3-ubyte')))
    assert torch.equal(labels, read_label_file(str(raw / 't10k-labels-idx1-ubyte')))
    assert torch.bincount(labels).tolist() == [1000] * 10

    test = build_dataset('fashion_mnist', folder, 'test')
    image, label = test[0]
    assert len(test) == 10000 and image.shape == (1, 28, 28) and label == int(labels[0])
    expected = (images[0].float() / 255 - 0.2860) / 0.3530
    torch.testing.assert_close(image[0], expected, rtol=0, atol=1e-6)
    same = build_dataset('fashion_mnist', tmp_path, 'test', transform=lambda im: torch.from_numpy(np.array(im)))
    assert torch.equal(same[9999][0], images[9999])  # torchvision's layout FashionMNIST/raw, uncompressed
    train = build_dataset('fashion_mnist', folder, 'train',
                          transform=build_transforms('fashion_mnist', True, auto_augment='rand-m9-n1-mstd0.4-inc1'))
    assert len(train) == 60000 and train[0][0].shape == (1, 28, 28)

    truncated = tmp_path / 'bad' / 't10k-labels-idx1-ubyte.gz'
    truncated.parent.mkdir()
    truncated.write_bytes((folder / 't10k-labels-idx1-ubyte.gz').read_bytes()[:-100])
    with pytest.raises(IdxFileError, match=r"bad/t10k-labels-idx1-ubyte\.gz"):
        read_idx(truncated)
    truncated.write_bytes(gzip.compress(gzip.decompress((folder / 't10k-labels-idx1-ubyte.gz').read_bytes())[:-7]))
    with pytest.raises(IdxFileError, match=r"t10k-labels-idx1-ubyte\.gz.*truncated"):
        read_idx(truncated)


# ---------------------------------------------------------------- CIFAR-10 image folder, transforms

def test_cifar10_jpeg_folder(cifar_jpg_root):
    from PIL import Image
    train = build_dataset('cifar10', cifar_jpg_root, 'train')
    test = build_dataset('cifar10', cifar_jpg_root, 'test', transform=build_transforms('cifar10', False))
    assert len(train) == 30 and len(test) == 30
    assert tuple(train.classes) == CIFAR10 and train.targets == [c for c in range(10) for _ in range(3)]
    image, label = test[10]
    assert image.shape == (3, 32, 32) and label == 3
    pixels = torch.from_numpy(np.array(Image.open(cifar_jpg_root / 'test' / 'cat' / '0001.jpg').convert('RGB')))
    mean, std = torch.tensor(dataset_info('cifar10').mean), torch.tensor(dataset_info('cifar10').std)
    expected = (pixels.permute(2, 0, 1).float() / 255 - mean[:, None, None]) / std[:, None, None]
    torch.testing.assert_close(image, expected, rtol=0, atol=1e-5)
    augmented = build_transforms('cifar10', is_training=True, auto_augment='rand-m9-n1-mstd0.4-inc1', re_prob=0.25)
    train.transform = augmented
    assert train[0][0].shape == (3, 32, 32)
    with pytest.raises(FileNotFoundError, match="cifar-10-batches-py"):
        build_dataset('cifar10', cifar_jpg_root / 'train' / 'cat', 'train')
    with pytest.raises(ValueError, match="expected 100"):
        build_dataset('cifar100', cifar_jpg_root, 'train')


def test_event_transforms():
    frames = torch.rand(4, 2, 34, 34)
    assert build_event_transforms(is_training=False) is None
    resize = build_event_transforms(img_size=48)
    assert resize(frames).shape == (4, 2, 48, 48)
    flip = build_event_transforms(is_training=True, hflip=1.0)
    assert torch.equal(flip(frames), frames.flip(-1))
    augment = build_event_transforms(is_training=True, trivial_augment=True)
    torch.manual_seed(0)
    same = frames[:1].expand(4, -1, -1, -1)
    for _ in range(20):
        out = augment(same)
        assert out.shape == same.shape and all(torch.equal(out[0], out[t]) for t in range(4))
    with pytest.raises(ValueError, match="build_event_transforms"):
        build_transforms('nmnist')


# ---------------------------------------------------------------- digits (the main job's data)

def test_digits_split_stratified_and_deterministic():
    from sklearn.datasets import load_digits
    labels = load_digits().target
    train_idx, test_idx = digits_split()
    assert len(train_idx) == 1437 and len(test_idx) == 360
    assert np.array_equal(np.sort(np.concatenate([train_idx, test_idx])), np.arange(1797))
    per_class = np.bincount(labels[test_idx], minlength=10)
    assert np.all(np.abs(per_class - 0.2 * np.bincount(labels)) <= 1)
    again_train, again_test = digits_split()
    assert np.array_equal(train_idx, again_train) and np.array_equal(test_idx, again_test)
    assert not np.array_equal(digits_split(seed=1)[1], test_idx)

    train, test = build_dataset('digits', split='train'), build_dataset('digits', split='test')
    assert len(train) == 1437 and len(test) == 360
    image, label = test[0]
    assert image.shape == (1, 8, 8) and image.dtype == torch.float32 and 0 <= image.min() and image.max() <= 1
    assert label == labels[test_idx[0]]
    torch.testing.assert_close(image[0], torch.from_numpy(load_digits().images[test_idx[0]] / 16).float())
    assert build_dataset('digits', split='test', img_size=16)[0][0].shape == (1, 16, 16)
    info = dataset_info('digits')
    assert (info.kind, info.num_classes, info.input_size) == ('tensor', 10, (1, 8, 8))
    assert math.isclose(len(test) / 1797, 0.2, abs_tol=0.001)


def test_unknown_split_and_missing_root():
    with pytest.raises(ValueError, match="split must be"):
        build_dataset('digits', split='dev')
    with pytest.raises(ValueError, match="needs root"):
        build_dataset('nmnist')
