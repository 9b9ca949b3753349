"""Trust (SPEC section 10): nothing read from a file runs code, what is loaded is what was hashed, and every bad input
gets an error that names the problem, the file and the fix.

The attacks are live: each ``_target_`` chain below creates a marker file when Hydra builds it (checked with
``trust_config=True``), and every entry point that reads a checkpoint must leave the marker absent.
"""
import errno
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn as nn
import yaml

pytest.importorskip('hydra')
from hydra import compose, initialize_config_dir  # noqa: E402

import snnzoo  # noqa: E402
from snnzoo.layers import LIFNode, MultiStep, to_time_major  # noqa: E402
from snnzoo.train.checkpoint import (CheckpointError, ConfigRefusedError, export_model,  # noqa: E402
                                     load_trained_model, load_training_state, save_training_state)
from snnzoo.train.loop import run_evaluation, run_training  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / 'configs'
DIGITS = 'spikformer_1_64_digits'


def _compose(overrides, name='train'):
    with initialize_config_dir(config_dir=str(CONFIGS), version_base='1.3'):
        return compose(config_name=name, overrides=list(overrides))


def _train_cfg(out, *overrides):
    return _compose([f'paths.output_dir={out}', 'trainer.progress_bar=false', 'trainer.device=cpu',
                     'energy.enabled=false', *overrides])


def _eval_cfg(checkpoint, out, *overrides):
    return _compose([f'checkpoint={checkpoint}', f'paths.output_dir={out}', 'energy.enabled=false', *overrides],
                    name='eval')


class TinyCustom(nn.Module):
    """A user's own model (not registered): only ``trust_config=true`` may rebuild it from a stored ``_target_``."""

    def __init__(self, num_classes: int = 10, in_chans: int = 1, T: int = 2):
        super().__init__()
        self.T, self.in_chans = T, in_chans
        self.conv = MultiStep(nn.Conv2d(in_chans, 4, 3, padding=1))
        self.lif = LIFNode(backend='torch')
        self.head = nn.Linear(4 * 64, num_classes)

    def forward(self, x):
        return self.head(self.lif(self.conv(to_time_major(x, self.T, self.in_chans))).flatten(2)).mean(0)


# --- the attack: _target_ chains of plain-library callables, each creating `marker` when built ----------------------

def _chains(tmp: Path, marker: Path) -> dict:
    payload = tmp / 'payload.txt'
    pickle_text = f"c__builtin__\nopen\n(V{marker}\nVw\ntR."  # a protocol-0 pickle that calls open(marker, 'w')
    write_payload = {'_target_': 'pathlib.Path.write_text',
                     '_args_': [{'_target_': 'pathlib.Path', '_args_': [str(payload)]}, pickle_text]}
    return {
        'write_text': {'_target_': 'pathlib.Path.write_text',
                       '_args_': [{'_target_': 'pathlib.Path', '_args_': [str(marker)]}, 'pwned']},
        'numpy_unpickle': {'_target_': 'builtins.dict', 'a': write_payload,
                           'b': {'_target_': 'numpy.load', 'file': str(payload), 'allow_pickle': True}},
        'torch_load': {'_target_': 'builtins.dict', 'a': write_payload,
                       'b': {'_target_': 'torch.load', 'f': str(payload), 'weights_only': False}},
        'builtins_open': {'_target_': 'builtins.open', 'file': str(marker), 'mode': 'w'},
        'shutil_copyfile': {'_target_': 'shutil.copyfile', 'src': __file__, 'dst': str(marker)},
        'partial': {'_target_': 'functools.partial', '_args_': [
            {'_target_': 'hydra.utils.get_method', 'path': 'pathlib.Path.touch'}, str(marker)]},
    }


CHAINS = ['write_text', 'numpy_unpickle', 'torch_load', 'builtins_open', 'shutil_copyfile', 'partial']
LIVE = CHAINS[:-1]  # the partial is refused all the same; it is never called


@pytest.fixture(scope='module')
def run_dir(tmp_path_factory) -> Path:
    """A genuine run of the main job (1 optimizer step): checkpoints/last.pt, model.safetensors, config.json."""
    out = tmp_path_factory.mktemp('run')
    run_training(_train_cfg(out, 'trainer.max_steps=1'))
    return out


def _plant(run_dir: Path, tmp: Path, form: str, chain: dict) -> Path:
    """A copy of the genuine run whose stored config carries ``chain`` in the place ``form`` names."""
    dst = tmp / 'planted'
    shutil.copytree(run_dir, dst)
    if form.startswith('pt'):
        path = dst / 'checkpoints' / 'last.pt'
        state = load_training_state(path)
        config = yaml.safe_load(state['config'])
        if form == 'pt_model':
            config['model'] = dict(chain, num_classes=10)
        else:
            config['data']['test'] = chain
        state['config'] = yaml.safe_dump(config)
        save_training_state(path, state)
        torch.load(path, weights_only=True)  # the planted file is plain data: torch's safe loader accepts it
        return path
    path = dst / 'config.json'
    config = json.loads(path.read_text())
    if form == 'json_model':
        config['architecture'] = None
        config['snnzoo']['model'] = chain
    elif form == 'json_kwarg':
        config['model_args']['num_classes'] = chain
    elif form == 'json_data':
        config['snnzoo']['data']['test'] = chain
    elif form == 'json_transform':
        config['snnzoo']['data']['test']['transform'] = chain
    path.write_text(json.dumps(config))
    return dst


FORMS = ['pt_model', 'pt_data', 'json_model', 'json_kwarg', 'json_data', 'json_transform']


@pytest.mark.parametrize('form', FORMS)
@pytest.mark.parametrize('chain', CHAINS)
def test_stored_target_chains_are_refused(run_dir, tmp_path, form, chain):
    marker = tmp_path / 'marker'
    planted = _plant(run_dir, tmp_path, form, _chains(tmp_path, marker)[chain])
    with pytest.raises(ConfigRefusedError, match=r'(?s)stored config was refused.*trust_config=true'):
        load_trained_model(planted)
    assert not marker.exists() and not (tmp_path / 'payload.txt').exists()


@pytest.mark.parametrize('chain', LIVE)
def test_the_chains_are_live_with_the_opt_in(run_dir, tmp_path, chain, capsys):
    """The refused chains do run code once trusted: the refusal, not their harmlessness, keeps the marker away."""
    marker = tmp_path / 'marker'
    planted = _plant(run_dir, tmp_path, 'json_model', _chains(tmp_path, marker)[chain])
    with pytest.raises(Exception):  # the chain's result is no model
        load_trained_model(planted, trust_config=True)
    assert marker.exists()
    assert 'trust_config=true: building' in capsys.readouterr().err


def test_snnzoo_eval_refuses_planted_configs(run_dir, tmp_path):
    marker = tmp_path / 'marker'
    chains = _chains(tmp_path, marker)
    for form in ('pt_model', 'json_model', 'json_data'):
        planted = _plant(run_dir, tmp_path / form, form, chains['numpy_unpickle'])
        with pytest.raises(ConfigRefusedError, match='trust_config=true'):
            run_evaluation(_eval_cfg(planted, tmp_path / 'eval'))
    planted = _plant(run_dir, tmp_path / 'cli', 'pt_model', chains['torch_load'])
    cli = 'from snnzoo.train.cli import evaluate; evaluate()'
    proc = subprocess.run([sys.executable, '-c', cli, f'checkpoint={planted}',
                           f'hydra.run.dir={tmp_path / "eval_cli"}', 'energy.enabled=false'],
                          capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode != 0
    assert 'stored config was refused' in proc.stderr and 'trust_config=true' in proc.stderr, proc.stderr[-2000:]
    assert not marker.exists() and not (tmp_path / 'payload.txt').exists()


def test_genuine_runs_still_evaluate(run_dir, tmp_path):
    """The stored data config of a real run (snnzoo.data.build_dataset) is data: evaluation needs no opt-in."""
    a = run_evaluation(_eval_cfg(run_dir, tmp_path / 'a'))
    b = run_evaluation(_eval_cfg(run_dir / 'checkpoints' / 'last.pt', tmp_path / 'b'))
    assert a['n_test'] == b['n_test'] == 360 and a['test_acc'] == pytest.approx(b['test_acc'], abs=1e-9)


def test_other_entry_points_never_read_the_stored_config(run_dir, tmp_path, monkeypatch):
    """snnzoo-energy, snnzoo-convert, load_checkpoint, snnzoo-train ckpt_path= and pretrained=True with a planted
    config.json: the weights are used, the config's chains never run."""
    from snnzoo.energy.cli import main as energy_main
    from snnzoo.train.convert_cli import main as convert_main
    marker = tmp_path / 'marker'
    chains = _chains(tmp_path, marker)
    last = _plant(run_dir, tmp_path / 'pt', 'pt_model', chains['numpy_unpickle'])
    folder = _plant(run_dir, tmp_path / 'json', 'json_model', chains['torch_load'])
    cfg = _train_cfg(tmp_path / 'x')
    args = [f"{k}={v}" for k, v in cfg.model.kwargs.items()]
    assert energy_main([cfg.model.name, '--checkpoint', str(last), '--model-args', *args, '--no-plot',
                        '--out', str(tmp_path / 'energy')]) == 0
    assert energy_main([cfg.model.name, '--checkpoint', str(folder / 'model.safetensors'), '--model-args', *args,
                        '--no-plot', '--out', str(tmp_path / 'energy')]) == 0
    kwargs = json.dumps(dict(cfg.model.kwargs))
    assert convert_main([cfg.model.name, str(last), '--tag', 'x', '--out', str(tmp_path / 'conv'),
                         '--model-args', kwargs]) == 0
    model = snnzoo.create_model(cfg.model.name, **cfg.model.kwargs)
    snnzoo.load_checkpoint(model, last)
    snnzoo.load_checkpoint(model, folder / 'model.safetensors')
    run_training(_train_cfg(tmp_path / 'resume', 'trainer.max_steps=2', f'ckpt_path={last}'))
    # pretrained=True beside a planted config.json
    weights = tmp_path / 'weights'
    weights.mkdir()
    published = snnzoo.create_model(DIGITS).pretrained_cfg['file']
    shutil.copy(ROOT / 'checkpoints' / published, weights / published)
    config = json.loads((ROOT / 'checkpoints' / f'{DIGITS}.digits.config.json').read_text())
    config['model_args'] = chains['builtins_open']
    config['architecture'] = chains['write_text']
    (weights / f'{DIGITS}.digits.config.json').write_text(json.dumps(config))
    monkeypatch.setenv('SNNZOO_WEIGHTS', str(weights))
    snnzoo.create_model(DIGITS, pretrained=True)
    assert not marker.exists() and not (tmp_path / 'payload.txt').exists()


def test_custom_models_need_the_command_line_opt_in(tmp_path, capsys):
    model = TinyCustom().eval()
    target = f'{__name__}.TinyCustom'
    export_model(model, tmp_path, model_cfg={'_target_': target, 'num_classes': 10},
                 extra={'data': {'name': 'digits', 'test': {'_target_': 'snnzoo.data.build_dataset',
                                                            'name': 'digits', 'split': 'test'}}})
    with pytest.raises(ConfigRefusedError, match=f'model._target_={target!r}'):
        load_trained_model(tmp_path)
    trained = load_trained_model(tmp_path, trust_config=True)
    assert f'model._target_ = {target}' in capsys.readouterr().err
    x = torch.rand(3, 1, 8, 8)
    assert torch.equal(trained.model(x), model(x))
    assert len(trained.build_test_set()) == 360


@pytest.mark.parametrize('edit, message', [
    (lambda c: c.update(architecture='os.system'), "'os.system', which is not a registered snnzoo model"),
    (lambda c: c['model_args'].update(pretrained_cfg_overlay={'url': 'http://x'}),
     "keyword 'pretrained_cfg_overlay' is not a parameter of Spikformer"),
    (lambda c: c['model_args'].update(embed_dim={'a': 1}), 'must be a number, string, boolean, null or a list'),
    (lambda c: c['snnzoo']['data']['test'].update(name='no_such_data'), "unknown data set 'no_such_data'"),
    (lambda c: c['snnzoo']['data']['test'].update(not_a_param=1), 'data.test.not_a_param'),
    (lambda c: c['snnzoo']['data']['test'].update(transform={'_target_': 'snnzoo.data.build_transforms',
                                                             '_args_': ['digits']}), 'stored config was refused'),
])
def test_stored_keywords_are_checked_against_the_constructor(run_dir, tmp_path, edit, message):
    dst = tmp_path / 'run'
    shutil.copytree(run_dir, dst)
    config = json.loads((dst / 'config.json').read_text())
    edit(config)
    (dst / 'config.json').write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=message.replace('(', r'\(').replace('[', r'\[')):
        trained = load_trained_model(dst)
        trained.build_test_set()


def test_pretrained_loads_the_bytes_that_were_hashed(tmp_path, monkeypatch):
    """A weight file swapped on disk right after a hash check is never what gets loaded: read_verified loads the
    hashed bytes, and pretrained=True (which checks the file, then reads it once) refuses the swapped file."""
    import hashlib

    from safetensors.torch import load, load_file, save_file

    from snnzoo.models import _builder
    published = snnzoo.create_model(DIGITS).pretrained_cfg['file']
    path = tmp_path / published
    shutil.copy(ROOT / 'checkpoints' / published, path)
    genuine = {k: v.clone() for k, v in load_file(path).items()}
    evil = tmp_path / 'evil.safetensors'
    save_file({k: torch.zeros_like(v) for k, v in genuine.items()}, evil)
    real_sha = hashlib.sha256

    class SwapAfterHash:
        swaps = 0

        def __init__(self, data=b''):
            self.h = real_sha(data)

        def update(self, data):
            self.h.update(data)

        def hexdigest(self):
            digest = self.h.hexdigest()
            if not SwapAfterHash.swaps:
                shutil.copy(evil, path)  # the attacker's swap, just after the check
                SwapAfterHash.swaps += 1
            return digest
    monkeypatch.setattr(_builder.hashlib, 'sha256', SwapAfterHash)
    state = load(_builder.read_verified(path))
    assert all(torch.equal(state[k], genuine[k]) for k in genuine)

    shutil.copy(ROOT / 'checkpoints' / published, path)
    SwapAfterHash.swaps = 0
    monkeypatch.setenv('SNNZOO_WEIGHTS', str(tmp_path))
    with pytest.raises(RuntimeError, match='sha256 mismatch'):
        snnzoo.create_model(DIGITS, pretrained=True)
    assert SwapAfterHash.swaps == 1


# --- every unclear message of the probe, made clear ------------------------------------------------------------------

def test_bad_weight_files_name_the_file_and_the_problem(run_dir, tmp_path):
    model = snnzoo.create_model(DIGITS)
    genuine = (ROOT / 'checkpoints' / model.pretrained_cfg['file']).read_bytes()
    cut = tmp_path / 'cut.safetensors'
    cut.write_bytes(genuine[:len(genuine) // 2])
    huge = tmp_path / 'huge.safetensors'
    huge.write_bytes((2 ** 40).to_bytes(8, 'little') + genuine[8:])  # a header length far past the file's end
    empty = tmp_path / 'empty.pth'
    empty.write_bytes(b'')
    for path, problem in ((cut, 'truncated or corrupt'), (huge, 'truncated or corrupt'), (empty, r'empty \(0 bytes\)'),
                          (run_dir, 'is a folder, not a weights file')):
        with pytest.raises((ValueError, OSError, RuntimeError), match=problem) as err:
            snnzoo.load_checkpoint(model, path)
        assert str(path) in str(err.value)
    with pytest.raises(CheckpointError, match=r"(?s)'/nonexistent/run' does not exist.*run folder") as err:
        run_evaluation(_eval_cfg('/nonexistent/run', tmp_path / 'eval'))
    assert 'model.safetensors\'' not in str(err.value).split('does not exist')[0]
    published = tmp_path / DIGITS / 'x-0123456789abcdef.safetensors'
    published.parent.mkdir()
    published.write_bytes(genuine)
    with pytest.raises(CheckpointError, match=r'no config file .*x\.config\.json'):
        load_trained_model(published)


def test_resume_with_another_model_config_lists_the_keys(run_dir, tmp_path):
    last = run_dir / 'checkpoints' / 'last.pt'
    with pytest.raises(CheckpointError, match=rf'is a folder, not a file: use ckpt_path={last}'):
        load_training_state(run_dir)
    with pytest.raises(CheckpointError, match=r'(?s)another model configuration.*shape mismatch.*model.checkpoint='):
        run_training(_train_cfg(tmp_path, 'model.kwargs.embed_dim=32', 'trainer.max_steps=2', f'ckpt_path={last}'))


def test_disk_full_during_a_checkpoint_save_keeps_the_last_one(run_dir, tmp_path, monkeypatch):
    """A writer failing with ENOSPC mid-save (torch.save then reports 'unexpected pos'): the message says no space is
    left and names the last good checkpoint, whose bytes are unchanged; no temporary file is left."""
    import hashlib

    from snnzoo import _files
    path = tmp_path / 'checkpoints' / 'last.pt'
    path.parent.mkdir()
    shutil.copy(run_dir / 'checkpoints' / 'last.pt', path)
    before = hashlib.sha256(path.read_bytes()).hexdigest()
    state = load_training_state(path)
    real_fdopen = os.fdopen

    class Full:
        def __init__(self, f):
            self.f, self.written = f, 0

        def write(self, data):
            self.written += len(data)
            if self.written > 4096:
                raise OSError(errno.ENOSPC, 'No space left on device')
            return self.f.write(data)

        def __getattr__(self, name):
            return getattr(self.f, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()
    monkeypatch.setattr(_files.os, 'fdopen', lambda fd, mode: Full(real_fdopen(fd, mode)))
    with pytest.raises(CheckpointError, match=rf'(?s)no space left.*last good checkpoint {path} is intact') as err:
        save_training_state(path, state)
    assert 'unexpected pos' in repr(err.value.__cause__) or isinstance(err.value.__cause__, OSError)
    assert hashlib.sha256(path.read_bytes()).hexdigest() == before
    assert [p.name for p in path.parent.iterdir()] == ['last.pt']


def test_model_input_messages():
    model = snnzoo.create_model(DIGITS, pretrained=True).eval()
    x = torch.rand(4, 1, 8, 8)
    for dtype in (torch.float64, torch.float16):
        with pytest.raises(TypeError, match=rf'float32 parameters but the input is {dtype}: cast the input .* or the '
                                            rf'model'):
            model(x.to(dtype))
    bad = x.clone()
    bad[2, 0, 1, 1] = float('nan')
    with pytest.raises(FloatingPointError, match=r'NaN or infinite values \(first in sample 2 of 4\)'):
        model(bad)
    bad[2, 0, 1, 1] = float('inf')
    with pytest.raises(FloatingPointError, match='sample 2'):
        model(bad)
    with pytest.raises(ValueError, match=r'num_classes=-1 must be an integer >= 0'):
        snnzoo.create_model(DIGITS, num_classes=-1)


FAMILIES = [('spikformer_1_64_digits', {}), ('spikingformer_2_384_cifar', dict(embed_dim=64, depth=1, num_heads=4)),
            ('sdt_2_512_cifar', dict(embed_dim=64, depth=1, num_heads=4)),
            ('qkformer_4_384_cifar', dict(embed_dim=64, num_heads=4)),
            ('meta_spikeformer_8_384', dict(img_size=32, embed_dim=(16, 32, 64, 64), depth=(1, 1, 1, 1), num_heads=4)),
            ('sew_resnet_fmnist', {}), ('ms_resnet18', {})]


@pytest.mark.parametrize('name, kwargs', FAMILIES, ids=[f[0] for f in FAMILIES])
def test_empty_batch_gives_an_empty_output(name, kwargs):
    """B = 0, every family: the output has the shape of a one-sample forward with the batch size replaced by 0."""
    model = snnzoo.create_model(name, T=1, num_classes=7, **kwargs).eval()
    c, h, w = model.pretrained_cfg['input_size']
    h = w = kwargs.get('img_size', min(h, 32))
    for per_step in (False, True):
        with torch.no_grad():
            one = model(torch.rand(1, c, h, w), return_per_step=per_step)
            empty = model(torch.rand(0, c, h, w), return_per_step=per_step)
        expected = list(one.shape)
        expected[1 if per_step else 0] = 0
        assert list(empty.shape) == expected and empty.dtype == one.dtype


def _nan_digits(name, split, **opts):
    """The digits data set with every 7th sample (5, 12, ...) set to NaN (a corrupt file's decoded values)."""
    from snnzoo.data import build_dataset

    class WithNaN(torch.utils.data.Dataset):
        def __init__(self):
            self.inner = build_dataset(name, split=split, **opts)

        def __len__(self):
            return len(self.inner)

        def __getitem__(self, i):
            x, y = self.inner[i]
            return (torch.full_like(x, float('nan')) if i % 7 == 5 else x), y
    return WithNaN()


def test_non_finite_data_stops_training_eval_and_energy(run_dir, tmp_path, monkeypatch):
    nan_data = [f'data.train._target_={__name__}._nan_digits', f'data.test._target_={__name__}._nan_digits']
    with pytest.raises(FloatingPointError, match=r'training batch \d+ of epoch 0 holds NaN .*first in sample'):
        run_training(_train_cfg(tmp_path / 'train', *nan_data, 'trainer.max_steps=5'))
    cfg = _compose([f'checkpoint={run_dir}', f'paths.output_dir={tmp_path}/eval', 'energy.enabled=false',
                    'data=digits', f'data.test._target_={__name__}._nan_digits', 'batch_size=4'], name='eval')
    with pytest.raises(FloatingPointError, match=r'evaluation batch 1 holds NaN .*first in sample 1 of the batch'):
        run_evaluation(cfg)
    from snnzoo.energy import cli
    monkeypatch.setattr(cli, '_dataset_batches', lambda args: (
        torch.utils.data.DataLoader(_nan_digits('digits', 'test'), batch_size=4), 'digits with a NaN sample'))
    with pytest.raises(SystemExit, match=r'batch 1 of digits with a NaN sample holds NaN .*sample 1'):
        cli.main([DIGITS, '--data', 'digits', '--batches', '3', '--batch-size', '4', '--no-plot',
                  '--out', str(tmp_path / 'energy')])


@pytest.mark.parametrize('override, message', [
    ('optim.lr=abc', "optim.lr='abc' must be a positive number; set it on the command line, e.g. optim.lr=0.001"),
    ('trainer.epochs=0', 'trainer.epochs=0 must be a positive integer'),
    ('data.batch_size=-4', 'data.batch_size=-4 must be a positive integer'),
    ('trainer.max_steps=2.5', 'trainer.max_steps=2.5 must be a positive integer'),
])
def test_bad_training_settings_name_the_key(tmp_path, override, message):
    with pytest.raises(ValueError, match=message.replace('(', r'\(').replace('.', r'\.')):
        run_training(_train_cfg(tmp_path, override))


def test_aedat_messages(tmp_path):
    from event_files import AEDAT31_HEADER, _packet, _polarity_words, write_aedat2

    from snnzoo.data import EventFileError, read_aedat2, read_aedat31
    path = tmp_path / 'neg.aedat'
    path.write_bytes(AEDAT31_HEADER + _packet(1, _polarity_words([1], [2], [1], [5]), overflow=-1))
    with pytest.raises(EventFileError, match='timestamp overflow -1') as err:
        read_aedat31(path)
    assert str(path) in str(err.value)
    path.write_bytes(AEDAT31_HEADER)
    with pytest.raises(EventFileError, match='header and no polarity events'):
        read_aedat31(path)
    write_aedat2(path, [], [], [], [])
    with pytest.raises(EventFileError, match='header and no events'):
        read_aedat2(path)


# --- no litter -------------------------------------------------------------------------------------------------------

def test_stale_temporaries_are_removed_live_ones_kept(tmp_path):
    """A writer killed mid-save leaves its temporary file; the next start removes it, but never one that a live
    process still holds (locked) nor one younger than the cleaning process."""
    from snnzoo import _files
    load = (f"import importlib.util, sys, time\nspec = importlib.util.spec_from_file_location('files', "
            f"{_files.__file__!r})\nfiles = importlib.util.module_from_spec(spec)\nspec.loader.exec_module(files)\n")
    code = load + ("def write(f):\n    f.write(b'x' * 1000); f.flush(); print('writing', flush=True); time.sleep(60)\n"
                   "files.atomic_write(sys.argv[1], write)\n")
    target = tmp_path / 'last.pt'
    killed = subprocess.Popen([sys.executable, '-c', code, str(target)], stdout=subprocess.PIPE, text=True)
    live = subprocess.Popen([sys.executable, '-c', code, str(tmp_path / 'other.pt')], stdout=subprocess.PIPE, text=True)
    try:
        assert killed.stdout.readline().strip() == 'writing' and live.stdout.readline().strip() == 'writing'
        killed.kill()
        killed.wait()
        stale = [p for p in tmp_path.glob('.last.pt.*.tmp')]
        held = [p for p in tmp_path.glob('.other.pt.*.tmp')]
        assert len(stale) == len(held) == 1
        assert _files.remove_stale_temporaries(tmp_path) == []  # younger than this process: not judged stale
        cleaner = load + "print([p.name for p in files.remove_stale_temporaries(sys.argv[1])])"
        out = subprocess.run([sys.executable, '-c', cleaner, str(tmp_path)], capture_output=True, text=True,
                             timeout=120, check=True).stdout
        assert out.strip() == repr([stale[0].name])
        assert not stale[0].exists() and held[0].exists() and not target.exists()
    finally:
        live.kill()
        live.wait()
        killed.kill()


def test_frame_cache_serves_only_checked_frames_and_cleans_up(tmp_path, monkeypatch):
    import numpy as np

    from snnzoo import _files
    from snnzoo.data import FrameCache
    source = tmp_path / 'rec.bin'
    source.write_bytes(b'0')
    cache = FrameCache(tmp_path / 'cache', 'test', {'T': 2}, frame_shape=(2, 2, 4, 4))
    good = np.arange(64, dtype=np.int32).reshape(2, 2, 4, 4)
    assert cache.get('rec', [source], lambda: good).tolist() == good.tolist()
    path = cache.path('rec', [source])
    planted = {'wrong shape': dict(frames=np.zeros((3, 2, 4, 4), np.uint8)),
               'wrong dtype': dict(frames=np.zeros((2, 2, 4, 4), np.float32)),
               'other key': dict(frames=good, extra=good),
               'pickled objects': dict(frames=np.array([object()], dtype=object))}
    for what, arrays in planted.items():
        np.savez(path.with_suffix(''), **arrays)
        with pytest.warns(UserWarning, match='unreadable or not frames'):
            assert cache.get('rec', [source], lambda: good).tolist() == good.tolist(), what
    stale = cache.directory / '.rec-x.npz.abc.tmp'
    stale.write_bytes(b'partial')
    monkeypatch.setattr(_files, '_STARTED', stale.stat().st_mtime + 1)  # as if this process started afterwards
    FrameCache(tmp_path / 'cache', 'test', {'T': 2}, frame_shape=(2, 2, 4, 4))
    assert not stale.exists()


@pytest.mark.cuda
def test_non_finite_cuda_input_trips_the_asynchronous_assertion():
    """On CUDA the check never synchronises: the device assertion fires at the next synchronisation. It ends the CUDA
    context, so it runs in its own process."""
    code = ("import torch, snnzoo\n"
            "m = snnzoo.create_model('spikformer_1_64_digits', pretrained=True).cuda().eval()\n"
            "x = torch.rand(4, 1, 8, 8, device='cuda')\n"
            "assert m(x).shape == (4, 10) and m(x[:0]).shape == (0, 10)\n"
            "x[1, 0, 2, 2] = float('nan')\n"
            "y = m(x)\n"
            "torch.cuda.synchronize()\n")
    proc = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, timeout=300)
    out = proc.stderr + proc.stdout
    assert proc.returncode != 0 and ('NaN or infinite' in out or 'device-side assert' in out), out[-2000:]
