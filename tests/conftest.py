"""Shared test fixtures: where the real data and reference fixtures live, and GPU test selection."""
import os
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


def shared_path() -> Path:
    """``$SNNZOO_SHARED``, else ``../shared`` beside the checkout."""
    return Path(os.environ.get('SNNZOO_SHARED', ROOT.parent / 'shared'))


@pytest.fixture(scope='session')
def shared_dir() -> Path:
    path = shared_path()
    if not path.is_dir():
        pytest.skip(f"shared data not found at {path} (set SNNZOO_SHARED)")
    return path


@pytest.fixture(scope='session')
def reference_dir(shared_dir) -> Path:
    path = shared_dir / 'reference'
    if not path.is_dir():
        pytest.skip(f"reference fixtures not found at {path}")
    return path


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason='needs a CUDA GPU')
    for item in items:
        if 'cuda' in item.keywords:
            item.add_marker(skip)
