"""timm's own model tests (``tests/test_models.py`` of the timm 1.0.31 sdist), parametrized over snnzoo's names.

The sdist is fetched with ``pip download timm==1.0.31 --no-binary :all: --no-deps`` into ``$SNNZOO_TIMM_TESTS``
(default ``~/.cache/snnzoo/timm-tests``) the first time, checked against the pinned sha256, and only its
``tests/test_models.py`` is unpacked. Offline (or with another timm installed) the module skips with the reason.
Each test below calls timm's test function unchanged, with timm's own input-size limits, on the CPU.

Which names: all of timm's tests on all 53 names take over 15 minutes on 2 CPU cores, so each test runs on a sample
that covers every code path (stem, attention, layout, block type, head) of every family; the other names differ from
a sampled one only in width and depth. The config / feature tests (cheap at timm's 96-pixel feature size or on the
meta device) run on ``CFG_NAMES``; forward / backward / FX at timm's sizes (up to 224) on ``RUN_NAMES``, the
cheapest name of each code path (Meta-SpikeFormer's only configurations are ImageNet-sized: its forward and backward
are covered by tests/test_meta_spikeformer.py); the pruning contract, which rebuilds the model per level, on
``PRUNE_NAMES``.
"""
import hashlib
import importlib.util
import os
import subprocess
import sys
import tarfile
import tempfile
import warnings
from pathlib import Path

import pytest
import timm

import snnzoo

TIMM_VERSION = '1.0.31'
SDIST_SHA256 = 'baa0b333339c46d3d6d4965d99b69f5053afed71210e8f433d7ea5ee6a18f0ec'
MEMBER = f'timm-{TIMM_VERSION}/tests/test_models.py'


def _cache() -> Path:
    return Path(os.environ.get('SNNZOO_TIMM_TESTS', Path.home() / '.cache' / 'snnzoo' / 'timm-tests'))


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _fetch() -> Path:
    """Path of timm's ``test_models.py`` (downloaded, verified and unpacked when absent); raises with the reason."""
    target = _cache() / MEMBER
    if target.is_file():
        return target
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, '-m', 'pip', 'download', f'timm=={TIMM_VERSION}', '--no-binary', ':all:',
               '--no-deps', '--quiet', '-d', tmp]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
        sdist = Path(tmp) / f'timm-{TIMM_VERSION}.tar.gz'
        if done.returncode or not sdist.is_file():
            raise RuntimeError(f"`{' '.join(cmd[2:])}` failed (offline?): {done.stderr.strip()[-300:]}")
        digest = _sha256(sdist)
        if digest != SDIST_SHA256:
            raise RuntimeError(f"timm {TIMM_VERSION} sdist has sha256 {digest}, expected {SDIST_SHA256}")
        with tarfile.open(sdist) as tar:
            tar.extract(MEMBER, _cache(), filter='data')
    return target


def _load_timm_tests():
    if timm.__version__ != TIMM_VERSION:
        return None, f"timm {timm.__version__} is installed; these are timm {TIMM_VERSION}'s tests"
    try:
        path = _fetch()
    except Exception as e:  # offline, pip missing, hash mismatch: say why and skip
        return None, f"timm {TIMM_VERSION}'s tests/test_models.py unavailable: {e}"
    spec = importlib.util.spec_from_file_location('timm_test_models', path)
    module = importlib.util.module_from_spec(spec)
    with warnings.catch_warnings():  # timm's CI markers (base, cfg, features ...) are not registered here
        warnings.simplefilter('ignore', pytest.PytestUnknownMarkWarning)
        spec.loader.exec_module(module)
    return module, ''


tm, _SKIP_REASON = _load_timm_tests()
pytestmark = pytest.mark.skipif(tm is None, reason=_SKIP_REASON)

CFG_NAMES = ['spikformer_1_64_digits', 'spikformer_cml_4_384_cifar', 'spikingformer_4_256_cifar',
             'spikingformer_cml_2_256_dvs', 'sdt_2_512_cifar', 'sdt_2_256_cifar10dvs', 'meta_spikeformer_8_384',
             'qkformer_4_384_cifar', 'qkformer_2_256_dvs', 'sew_resnet18', 'sew_resnet50', 'sew_resnet_nmnist',
             'ms_resnet18']
RUN_NAMES = ['spikformer_1_64_digits', 'spikformer_cml_4_384_cifar', 'spikingformer_4_256_cifar', 'sdt_2_512_cifar',
             'qkformer_4_384_cifar', 'sew_resnet18', 'sew_resnet_nmnist', 'ms_resnet18']
PRUNE_NAMES = ['spikformer_1_64_digits', 'sew_resnet18', 'sew_resnet_nmnist']
PRETRAINED = [n.split('.')[0] for n in snnzoo.list_pretrained()]


def _at_least_three_levels(name):
    """timm's feature tests assume >= 3 feature levels; a 1-block isotropic net has two (patch embedding, block)."""
    if name == 'spikformer_1_64_digits':
        pytest.skip("one block: two feature levels (patch embedding, block), timm's tests assume >= 3; "
                    "tests/test_features.py checks its two")


@pytest.mark.parametrize('name', RUN_NAMES)
def test_forward(name):
    tm.test_model_forward(name, 1)


@pytest.mark.parametrize('name', RUN_NAMES)
def test_backward(name):
    tm.test_model_backward(name, 2)


@pytest.mark.parametrize('name', CFG_NAMES)
def test_default_cfgs(name):
    tm.test_model_default_cfgs(name, 1, 'meta')


@pytest.mark.parametrize('name', PRETRAINED)
def test_load_pretrained(name):
    tm.test_model_load_pretrained(name, 1)


@pytest.mark.parametrize('name', PRETRAINED)
def test_features_pretrained(name):
    tm.test_model_features_pretrained(name, 1)


@pytest.mark.parametrize('name', CFG_NAMES)
def test_forward_features(name):
    _at_least_three_levels(name)
    tm.test_model_forward_features(name, 1)


@pytest.mark.parametrize('name', CFG_NAMES)
def test_forward_intermediates_features(name):
    tm.test_model_forward_intermediates_features(name, 1)


@pytest.mark.parametrize('name', CFG_NAMES)
def test_forward_intermediates(name):
    _at_least_three_levels(name)
    tm.test_model_forward_intermediates(name, 1)


@pytest.mark.parametrize('name', PRUNE_NAMES)
def test_prune_intermediate_layers(name):
    tm.test_prune_intermediate_layers_contract(name)


@pytest.mark.parametrize('name', RUN_NAMES)
def test_forward_fx(name):
    tm.test_model_forward_fx(name, 1)


@pytest.mark.parametrize('name', RUN_NAMES)
def test_backward_fx(name):
    tm.test_model_backward_fx(name, 2)
