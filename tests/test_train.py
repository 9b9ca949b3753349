"""The training pipeline (snnzoo.train + configs/): the main job's path on a tiny budget, exact resume, DDP with gloo
matching one process, wandb offline, NaN and truncated-checkpoint errors, and every experiment config composing.

No full training runs here: every run stops after a few optimizer steps (``trainer.max_steps``).
"""
import hashlib
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn as nn

pytest.importorskip('hydra')
import hydra.utils  # noqa: E402
from hydra import compose, initialize_config_dir  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402

import snnzoo  # noqa: E402
from snnzoo.layers import LIFNode, MultiStep, to_time_major  # noqa: E402
from snnzoo.train.checkpoint import (CheckpointError, atomic_write, load_exported,  # noqa: E402
                                     load_training_state)
from snnzoo.train.distributed import ShardedSampler  # noqa: E402
from snnzoo.train.loop import NonFiniteLossError, build_model, run_evaluation, run_training  # noqa: E402
from snnzoo.train.losses import TETLoss, create_loss  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / 'configs'
EXPERIMENTS = sorted(p.stem for p in (CONFIGS / 'experiment').glob('*.yaml'))
REQUIRED_EXPERIMENTS = {
    'spikformer_cifar10', 'spikformer_cifar10_dvs', 'spikingformer_cifar10', 'sdt_cifar10', 'sdt_imagenet',
    'qkformer_cifar10', 'qkformer_cifar10_dvs', 'meta_spikeformer_imagenet', 'sew_resnet_imagenet',
    'sew_resnet_dvs_gesture', 'ms_resnet_imagenet', 'fashion_mnist', 'nmnist'}


class TinySNN(nn.Module):
    """A two-layer spiking conv net for fast pipeline tests; ``nan_at`` makes the n-th training forward return NaN."""

    def __init__(self, num_classes: int = 10, in_chans: int = 1, T: int = 2, width: int = 8, norm: bool = True,
                 nan_at=None):
        super().__init__()
        self.T, self.in_chans, self.num_classes, self.nan_at, self.calls = T, in_chans, num_classes, nan_at, 0
        bn = nn.BatchNorm2d if norm else (lambda c: nn.Identity())
        self.conv1 = MultiStep(nn.Conv2d(in_chans, width, 3, padding=1), bn(width))
        self.lif1 = LIFNode(tau=2.0, detach_reset=True, backend='torch')
        self.conv2 = MultiStep(nn.Conv2d(width, width, 3, padding=1), bn(width), nn.MaxPool2d(2))
        self.lif2 = LIFNode(tau=2.0, detach_reset=True, backend='torch')
        self.head = nn.Linear(width * 16, num_classes)

    def forward(self, x, return_per_step=False):
        x = self.lif2(self.conv2(self.lif1(self.conv1(to_time_major(x, self.T, self.in_chans)))))
        out = self.head(x.flatten(2))
        if self.training:
            self.calls += 1
            if self.nan_at is not None and self.calls >= self.nan_at:
                out = out * float('nan')
        return out if return_per_step else out.mean(0)


TINY = ['model=custom', f'model._target_={__name__}.TinySNN']


def _compose(overrides, name='train'):
    with initialize_config_dir(config_dir=str(CONFIGS), version_base='1.3'):
        return compose(config_name=name, overrides=list(overrides))


def _train_cfg(tmp, *overrides):
    return _compose([f'paths.output_dir={tmp}', 'trainer.progress_bar=false', 'trainer.device=cpu', *overrides])


def _sha(path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


# --- losses and sampler: small pieces against hand computations ------------------------------------------------------

def test_tet_loss_matches_formula():
    torch.manual_seed(0)
    out, y = torch.randn(4, 3, 5, dtype=torch.float64), torch.tensor([0, 3, 1])
    lamb, means = 0.3, 1.0
    ce = sum(-torch.log_softmax(out[t], -1)[torch.arange(3), y].mean() for t in range(4)) / 4
    mse = ((out - means) ** 2).mean()
    expected = (1 - lamb) * ce + lamb * mse
    got = TETLoss(nn.CrossEntropyLoss(), lamb=lamb, means=means)(out, y)
    assert torch.allclose(got, expected, atol=1e-12)
    with pytest.raises(ValueError, match=r'\[T, B, C\]'):
        TETLoss(nn.CrossEntropyLoss())(out[0], y)


def test_create_loss_picks_timm_criteria():
    from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy
    assert isinstance(create_loss(0.1, mixup_active=True), SoftTargetCrossEntropy)
    assert isinstance(create_loss(0.1), LabelSmoothingCrossEntropy)
    assert isinstance(create_loss(0.0), nn.CrossEntropyLoss)
    tet = create_loss(0.1, tet=True, tet_lamb=0.001)
    assert isinstance(tet, TETLoss) and isinstance(tet.criterion, LabelSmoothingCrossEntropy)


def test_sharded_sampler_splits_the_single_process_batches():
    n, batch, world = 103, 8, 2
    single = list(ShardedSampler(n, 1, 0, seed=7))
    shards = [list(ShardedSampler(n, world, r, seed=7)) for r in range(world)]
    per = batch // world
    for k in range(n // batch):
        together = sorted(i for s in shards for i in s[k * per:(k + 1) * per])
        assert together == sorted(single[k * batch:(k + 1) * batch])
    resumed = ShardedSampler(n, 1, 0, seed=7)
    resumed.set_epoch(0, 24)
    assert list(resumed) == single[24:]
    evals = [list(ShardedSampler(n, 3, r, shuffle=False)) for r in range(3)]
    assert sorted(i for e in evals for i in e) == list(range(n))


def test_atomic_write_keeps_the_old_file_on_failure(tmp_path):
    target = tmp_path / 'f.bin'
    atomic_write(target, lambda f: f.write(b'old'))

    def boom(f):
        f.write(b'partial')
        raise OSError('disk full')
    with pytest.raises(OSError, match='disk full'):
        atomic_write(target, boom)
    assert target.read_bytes() == b'old'
    assert [p.name for p in tmp_path.iterdir()] == ['f.bin']


# --- the main job's code path ----------------------------------------------------------------------------------------

def test_main_job_tiny_budget_end_to_end(tmp_path):
    """Default config (the small Spikformer on digits) for 3 optimizer steps: log, checkpoint, export, energy, eval;
    saved spikes rebuilt for backward."""
    cfg = _train_cfg(tmp_path, 'trainer.max_steps=3', 'trainer.eval_every_n_epochs=0', 'energy.num_images=4',
                     'trainer.recompute_spikes=true')
    name = cfg.model.name
    if not snnzoo.list_models(name):
        pytest.skip(f"the main job's model {name} is not registered yet")
    result = run_training(cfg)
    assert result['global_step'] == 3 and result['n_test'] == 360
    assert 0 <= result['test_acc'] <= 100 and result['img_per_s'] > 0 and result['peak_mem_mb'] > 0
    config = json.loads((tmp_path / 'config.json').read_text())
    assert config['architecture'] == name and config['num_classes'] == 10
    assert config['model_args']['img_size'] in (8, [8, 8])
    assert config['snnzoo']['data']['name'] == 'digits'
    assert (tmp_path / 'checkpoints' / 'last.pt').is_file()
    assert [json.loads(line)['step'] for line in (tmp_path / 'metrics.jsonl').read_text().splitlines()] == [3]
    model, _ = load_exported(tmp_path)
    assert type(model).__name__ == type(build_model(cfg.model)).__name__
    if 'energy_report' in result:
        assert 'convention' in result['energy_report']
    ev = run_evaluation(_compose([f'checkpoint={tmp_path}', f'paths.output_dir={tmp_path}/eval',
                                  'energy.enabled=false'], name='eval'))
    assert ev['test_acc'] == pytest.approx(result['test_acc'], abs=1e-9)
    ev = run_evaluation(_compose([f'checkpoint={tmp_path}/checkpoints/last.pt', f'paths.output_dir={tmp_path}/eval',
                                  'energy.enabled=false'], name='eval'))
    assert ev['test_acc'] == pytest.approx(result['test_acc'], abs=1e-9)


def test_tet_bf16_clipping_and_accumulation_run(tmp_path):
    """The other loop options on a few steps: TET on per-step logits, bf16 autocast, clipping, accumulation."""
    result = run_training(_train_cfg(tmp_path, *TINY, 'loss=tet', 'loss.tet_lamb=0.05', 'trainer.precision=bf16',
                                     'trainer.clip_grad=1.0', 'trainer.accum_steps=2', 'trainer.max_steps=2',
                                     'energy.enabled=false'))
    assert result['global_step'] == 2 and math.isfinite(result['test_loss'])
    line = json.loads((tmp_path / 'metrics.jsonl').read_text().splitlines()[-1])
    assert math.isfinite(line['train_loss']) and line['img_per_s'] > 0
    with pytest.raises(ValueError, match='fp16 needs a CUDA GPU'):
        run_training(_train_cfg(tmp_path, *TINY, 'trainer.precision=fp16', 'trainer.max_steps=1'))
    with pytest.raises(ValueError, match='recompute_saved_spikes'):
        run_training(_train_cfg(tmp_path, *TINY, 'trainer.recompute_spikes=true', 'trainer.max_steps=1'))


def test_wandb_offline_cli_run(tmp_path):
    """``python -m snnzoo.train`` through Hydra with logger=wandb in offline mode: no account, no network."""
    pytest.importorskip('wandb')
    run_dir = tmp_path / 'run'
    env = dict(os.environ, WANDB_MODE='offline', WANDB_DIR=str(tmp_path / 'wandb'), WANDB_SILENT='true',
               PYTHONPATH=os.pathsep.join([str(Path(__file__).parent), os.environ.get('PYTHONPATH', '')]))
    env.pop('WANDB_API_KEY', None)
    cmd = [sys.executable, '-m', 'snnzoo.train', 'debug=fast', 'logger=wandb', 'trainer.device=cpu',
           'model=custom', 'model._target_=test_train.TinySNN', f'hydra.run.dir={run_dir}']
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    offline_runs = list((run_dir / 'wandb').glob('offline-run-*'))
    assert offline_runs, f"no offline wandb run under {run_dir / 'wandb'}"
    assert any(offline_runs[0].glob('*.wandb'))
    assert (run_dir / 'model.safetensors').is_file() and (run_dir / 'train.log').is_file()


# --- exact resume, NaN and truncated checkpoints ---------------------------------------------------------------------

RESUME = TINY + ['loss=mixup', 'loss.mixup.cutmix_alpha=0.5', 'trainer.accum_steps=2', 'trainer.epochs=2',
                 'trainer.ema.enabled=true', 'trainer.ema.decay=0.9', 'data.batch_size=64',
                 '+data.train.transform._target_=torchvision.transforms.RandomErasing', '+data.train.transform.p=0.5']


def test_exact_resume_is_bit_identical(tmp_path):
    """k steps, stop, resume to N (across an epoch boundary) == N uninterrupted steps, bit for bit."""
    n_steps, k = 14, 5  # 11 optimizer steps per epoch
    full = run_training(_train_cfg(tmp_path / 'full', *RESUME, f'trainer.max_steps={n_steps}'))
    run_training(_train_cfg(tmp_path / 'part', *RESUME, f'trainer.max_steps={k}'))
    ckpt = tmp_path / 'part' / 'checkpoints' / 'last.pt'
    assert load_training_state(ckpt)['global_step'] == k
    resumed = run_training(_train_cfg(tmp_path / 'part', *RESUME, f'trainer.max_steps={n_steps}',
                                      f'ckpt_path={ckpt}'))
    assert full['global_step'] == resumed['global_step'] == n_steps
    a = load_training_state(tmp_path / 'full' / 'checkpoints' / 'last.pt')
    b = load_training_state(ckpt)
    for part in ('model', 'ema'):
        assert a[part].keys() == b[part].keys()
        for key in a[part]:
            assert torch.equal(a[part][key], b[part][key]), f"{part}.{key} differs after resume"
    for sa, sb in zip(a['optimizer']['state'].values(), b['optimizer']['state'].values()):
        assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert a['scheduler'] == b['scheduler']
    assert full['test_acc'] == resumed['test_acc']


def test_nan_loss_stops_clearly_and_keeps_the_checkpoint(tmp_path):
    run_training(_train_cfg(tmp_path, *TINY, 'trainer.max_steps=2'))
    ckpt = tmp_path / 'checkpoints' / 'last.pt'
    before = _sha(ckpt)
    with pytest.raises(NonFiniteLossError, match=r'loss is nan.*intact.*last\.pt') as err:
        run_training(_train_cfg(tmp_path, *TINY, '+model.nan_at=2', 'trainer.max_steps=6', f'ckpt_path={ckpt}'))
    assert 'optimizer step 3' in str(err.value)
    assert _sha(ckpt) == before
    with pytest.raises(NonFiniteLossError, match='parameters .* became NaN or infinite by optimizer step 1'):
        run_training(_train_cfg(tmp_path, *TINY, 'optim.lr=inf', 'trainer.max_steps=1'))  # weights blow up
    assert _sha(ckpt) == before
    assert load_training_state(ckpt)['global_step'] == 2
    assert not [p for p in ckpt.parent.iterdir() if p.name != 'last.pt']


def test_truncated_checkpoints_give_clear_errors(tmp_path):
    run_training(_train_cfg(tmp_path, *TINY, 'trainer.max_steps=1', 'energy.enabled=false'))
    ckpt = tmp_path / 'checkpoints' / 'last.pt'
    data = ckpt.read_bytes()
    cut = tmp_path / 'cut.pt'
    cut.write_bytes(data[:len(data) // 2])
    with pytest.raises(CheckpointError, match='truncated or corrupt'):
        run_training(_train_cfg(tmp_path / 'again', *TINY, f'ckpt_path={cut}'))
    weights = tmp_path / 'model.safetensors'
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(CheckpointError, match='truncated or corrupt'):
        load_exported(tmp_path)
    plain = tmp_path / 'plain.pt'
    torch.save({'weight': torch.zeros(2)}, plain)
    with pytest.raises(CheckpointError, match='not an snnzoo training checkpoint'):
        load_training_state(plain)


# --- DistributedDataParallel ------------------------------------------------------------------------------------------

def test_torchrun_gloo_two_processes_match_one(tmp_path):
    """2 processes x 16 images (gloo, CPU) == 1 process x 32 images: same global batches, averaged gradients."""
    common = ['model=custom', 'model._target_=test_train.TinySNN', '+model.norm=false', 'loss=ce',
              'trainer.device=cpu', 'trainer.eval_every_n_epochs=0', 'energy.enabled=false',
              'trainer.progress_bar=false']
    env = dict(os.environ, OMP_NUM_THREADS='1',
               PYTHONPATH=os.pathsep.join([str(Path(__file__).parent), os.environ.get('PYTHONPATH', '')]))
    cmd = [sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node=2', '-m', 'snnzoo.train',
           *common, 'trainer.max_steps=3', 'data.batch_size=16', f'hydra.run.dir={tmp_path / "ddp"}']
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    single = run_training(_compose([f'paths.output_dir={tmp_path / "one"}', *common, 'trainer.max_steps=3',
                                    'data.batch_size=32']))
    from safetensors.torch import load_file
    a, b = load_file(tmp_path / 'ddp' / 'model.safetensors'), load_file(tmp_path / 'one' / 'model.safetensors')
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-4, atol=1e-5)
    run_training(_compose([f'paths.output_dir={tmp_path / "two_steps"}', *common, 'data.batch_size=32',
                           'trainer.max_steps=2']))
    c = load_file(tmp_path / 'two_steps' / 'model.safetensors')
    assert max((a[k] - c[k]).abs().max().item() for k in a) > 1e-4  # the third step changed the weights
    ddp_acc = json.loads((tmp_path / 'ddp' / 'config.json').read_text())['snnzoo']['metrics']['test_acc']
    assert math.isclose(ddp_acc, single['test_acc'], abs_tol=100 / 360 + 1e-9)


# --- every experiment composes ---------------------------------------------------------------------------------------

def test_required_experiments_exist():
    assert REQUIRED_EXPERIMENTS <= set(EXPERIMENTS)


@pytest.mark.parametrize('experiment', EXPERIMENTS)
def test_experiment_config_composes(experiment, tmp_path):
    """Each recipe composes with overrides, resolves fully, names a known optimizer and a registered model that
    builds with its kwargs (on the meta device: no memory, no training)."""
    import timm.optim
    cfg = _compose([f'experiment={experiment}', f'paths.output_dir={tmp_path}', 'paths.data_dir=/data',
                    'trainer.epochs=3', 'data.batch_size=2'])
    resolved = OmegaConf.to_container(cfg, resolve=True)
    assert resolved['trainer']['epochs'] == 3 and resolved['data']['batch_size'] == 2
    assert resolved['data']['train']['_target_'].startswith('snnzoo.data.')
    assert resolved['optim']['opt'] in timm.optim.list_optimizers()
    assert resolved['data']['num_classes'] == resolved['model']['kwargs']['num_classes']
    for split in ('train', 'test'):  # the transforms are built (no data needed): their arguments are valid
        if cfg.data[split].get('transform') is not None:
            hydra.utils.instantiate(cfg.data[split].transform)
    name = resolved['model']['name']
    if not snnzoo.list_models(name):
        pytest.skip(f"{name} is not registered (its family has not landed)")
    with torch.device('meta'):
        model = build_model(cfg.model)
    assert model.num_classes == resolved['data']['num_classes']
