"""Shared test fixtures: where the real data and reference fixtures live, and GPU test selection."""
import functools
import json
import os
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
pytest.register_assert_rewrite('reference_check')


def shared_path() -> Path:
    """``$SNNZOO_SHARED``, else ``../shared`` beside the checkout."""
    return Path(os.environ.get('SNNZOO_SHARED', ROOT.parent / 'shared'))


@pytest.fixture(scope='session')
def shared_dir() -> Path:
    path = shared_path()
    if not path.is_dir():
        pytest.skip(f"shared data not found at {path} (set SNNZOO_SHARED)")
    return path


def _shared_subdir(shared_dir: Path, name: str, what: str) -> Path:
    """``shared_dir / name``, or skip the test when it is missing."""
    path = shared_dir / name
    if not path.is_dir():
        pytest.skip(f"{what} not found at {path}")
    return path


@pytest.fixture(scope='session')
def reference_dir(shared_dir) -> Path:
    return _shared_subdir(shared_dir, 'reference', 'reference fixtures')


@pytest.fixture(scope='session')
def data_dir(shared_dir) -> Path:
    return _shared_subdir(shared_dir, 'data', 'real data')


@pytest.fixture(scope='module')
def load_fixture(reference_dir):
    """``load_fixture('family/name')``: ``reference/fixtures/family/name.pt``, loaded once per test module."""
    return functools.cache(lambda name: torch.load(reference_dir / 'fixtures' / f'{name}.pt', weights_only=True))


@pytest.fixture(scope='session')
def load_spec(reference_dir):
    """``load_spec('family/config')``: the paper configuration ``reference/specs/family/config.json``."""
    return lambda name: json.loads((reference_dir / 'specs' / f'{name}.json').read_text())


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason='needs a CUDA GPU')
    for item in items:
        if 'cuda' in item.keywords:
            item.add_marker(skip)
