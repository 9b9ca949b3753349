"""Where the training CLI finds its Hydra configs: the source checkout, a wheel's installed copy, SNNZOO_CONFIG_DIR."""
import tomllib
from pathlib import Path

import pytest

from snnzoo.train import cli

ROOT = Path(__file__).resolve().parents[1]


def test_wheel_ships_every_config():
    """pyproject's data-files globs cover every YAML under configs/ (a new config group must be added there)."""
    data_files = tomllib.loads((ROOT / 'pyproject.toml').read_text())['tool']['setuptools']['data-files']
    shipped = {f for globs in data_files.values() for pattern in globs for f in ROOT.glob(pattern)}
    assert shipped == set((ROOT / 'configs').rglob('*.yaml'))
    for target, globs in data_files.items():  # each file lands at the same relative place under share/snnzoo
        for pattern in globs:
            assert target == 'share/snnzoo/' + str(Path(pattern).parent)


def test_config_dir_prefers_the_source_checkout(monkeypatch):
    monkeypatch.delenv('SNNZOO_CONFIG_DIR', raising=False)
    assert cli.config_dir() == ROOT / 'configs'


def test_config_dir_falls_back_to_the_installed_copy(monkeypatch, tmp_path):
    installed = tmp_path / 'share' / 'snnzoo' / 'configs'
    installed.mkdir(parents=True)
    (installed / 'train.yaml').write_text('defaults: []\n')
    monkeypatch.delenv('SNNZOO_CONFIG_DIR', raising=False)
    monkeypatch.setattr(cli, '__file__', str(tmp_path / 'site-packages' / 'snnzoo' / 'train' / 'cli.py'))
    monkeypatch.setattr(cli.sys, 'prefix', str(tmp_path))
    assert cli.config_dir() == installed


def test_config_dir_missing_names_where_it_looked(monkeypatch, tmp_path):
    monkeypatch.setenv('SNNZOO_CONFIG_DIR', str(tmp_path))
    with pytest.raises(FileNotFoundError, match=f"looked in {tmp_path}.*SNNZOO_CONFIG_DIR"):
        cli.config_dir()
