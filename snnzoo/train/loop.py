"""The training and evaluation loops behind ``snnzoo-train`` and ``snnzoo-eval``, driven by a composed Hydra config.

One optimizer step = ``trainer.accum_steps`` micro-batches of ``data.batch_size`` samples per process; the global batch
is ``data.batch_size x accum_steps x world_size``. The schedule is timm's: ``trainer.epochs`` (+ the scheduler's
cooldown epochs), the learning rate updated after every optimizer step. ``trainer.max_steps`` stops early (the
schedule is unchanged), which with ``ckpt_path`` gives an exact resume: the data order is a function of (seed, epoch),
every sample's augmentation a function of (seed, epoch, index), and the checkpoint carries every generator state.
"""
import contextlib
import logging
import os
import random
import sys
import time
from pathlib import Path
from typing import Optional

import numpy as np
import torch
import torch.nn as nn
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import DataLoader, Dataset

from ..layers.grad_modes import forward_backward, get_grad_mode, set_grad_mode
from ..layers.temporal import NonFiniteInputError
from ..models._checkpoint import check_state_dict_fits
from .checkpoint import (CheckpointError, capture_rng_state, export_model, load_trained_model, load_training_state,
                         remove_stale_temporaries, restore_rng_state, save_training_state)
from .distributed import (DistInfo, ShardedSampler, all_gather_object, all_reduce_sum, barrier, broadcast_object,
                          cleanup, init_distributed)
from .logger import MetricLogger, peak_memory_mb
from .losses import create_loss

__all__ = ['run_training', 'run_evaluation', 'evaluate', 'build_model', 'build_dataset', 'NonFiniteLossError']

log = logging.getLogger('snnzoo.train')

PRECISIONS = {'32': None, 'bf16': torch.bfloat16, 'fp16': torch.float16}


class NonFiniteLossError(FloatingPointError):
    """The loss became NaN or infinite; training stopped without writing a checkpoint."""


def _container(node) -> dict:
    """A config node as a plain dict (``{}`` for a missing one)."""
    return OmegaConf.to_container(node, resolve=True) if node is not None else {}


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2 ** 32)
    torch.manual_seed(seed)


class SeededDataset(Dataset):
    """``dataset[i]`` computed with the python, numpy and torch generators seeded from ``(seed, epoch, i)``.

    Random augmentations then depend only on the sample and the epoch, not on the worker that loads it or on the
    samples loaded before it, which makes a mid-epoch resume exact. The caller's generator states are restored.
    """

    def __init__(self, dataset: Dataset, seed: int):
        self.dataset, self.seed, self.epoch = dataset, seed, 0

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        s = int(np.random.SeedSequence([self.seed, self.epoch, index]).generate_state(1)[0])
        py, npy, th = random.getstate(), np.random.get_state(), torch.get_rng_state()
        random.seed(s)
        np.random.seed(s)
        torch.default_generator.manual_seed(s)  # CPU only: torch.manual_seed also queues lazy CUDA seeding
        try:
            return self.dataset[index]
        finally:
            random.setstate(py)
            np.random.set_state(npy)
            torch.set_rng_state(th)


def build_dataset(data_cfg: DictConfig, split: str) -> Dataset:
    """Instantiate ``data_cfg[split]`` (a ``_target_`` config returning a map-style data set of ``(x, y)``)."""
    import hydra.utils
    if data_cfg.get(split) is None:
        raise ValueError(f"the data config has no {split!r} entry (a _target_ building the {split} split); "
                         f"keys: {sorted(data_cfg.keys())}")
    return hydra.utils.instantiate(data_cfg[split], _convert_='all')


def build_model(model_cfg: DictConfig) -> nn.Module:
    """A registered snnzoo model (``name`` + ``kwargs``) or any module from a ``_target_``; then ``checkpoint``."""
    import hydra.utils
    import snnzoo
    cfg = OmegaConf.to_container(model_cfg, resolve=True)
    checkpoint = cfg.pop('checkpoint', None)
    if '_target_' in cfg:
        model = hydra.utils.instantiate(cfg)
    elif cfg.get('name'):
        model = snnzoo.create_model(cfg['name'], pretrained=cfg.get('pretrained', False), **(cfg.get('kwargs') or {}))
    else:
        raise ValueError("the model config needs a `name` (a registered model, see snnzoo.list_models()) "
                         "with `kwargs`, or a `_target_`")
    if checkpoint:
        snnzoo.load_checkpoint(model, checkpoint)
        log.info(f"initial weights from {checkpoint}")
    return model


def check_batch(x: torch.Tensor, where: str) -> None:
    """Stop with :class:`NonFiniteInputError` naming the batch and its first bad sample when ``x`` holds a NaN or inf
    (one ``isfinite(x).all()`` per batch, checked on the host)."""
    if not bool(torch.isfinite(x).all()):
        bad = int((~torch.isfinite(x.reshape(len(x), -1)).all(1)).nonzero()[0, 0])
        raise NonFiniteInputError(f"{where} holds NaN or infinite values (first in sample {bad} of the batch): check "
                                  f"the data files and the normalisation (data.*); nothing was trained on it")


def check_config(cfg: DictConfig) -> None:
    """The numeric settings a typo can break, each refused with what is wrong and an example of what to write."""
    def positive(key: str, value, example, integer: bool = True) -> None:
        kinds = (int,) if integer else (int, float)
        if isinstance(value, bool) or not isinstance(value, kinds) or not value > 0:
            raise ValueError(f"{key}={value!r} must be a positive {'integer' if integer else 'number'}; set it on "
                             f"the command line, e.g. {key}={example}")
    tr = cfg.trainer
    positive('trainer.epochs', tr.epochs, 10)
    positive('data.batch_size', cfg.data.batch_size, 32)
    positive('trainer.accum_steps', tr.get('accum_steps', 1), 1)
    if tr.get('max_steps') is not None:
        positive('trainer.max_steps', tr.max_steps, 100)
    positive('optim.lr', cfg.optim.get('lr'), 0.001, integer=False)


def _autocast(device: torch.device, precision) -> contextlib.AbstractContextManager:
    precision = str(precision)
    if precision not in PRECISIONS:
        raise ValueError(f"trainer.precision must be one of {sorted(PRECISIONS)}, got {precision!r}")
    dtype = PRECISIONS[precision]
    if dtype is None:
        return contextlib.nullcontext()
    if dtype is torch.float16 and device.type != 'cuda':
        raise ValueError("trainer.precision=fp16 needs a CUDA GPU; use bf16 or 32 on the CPU")
    return torch.autocast(device_type=device.type, dtype=dtype)


def _loader(dataset: Dataset, batch_size: int, sampler, data_cfg: DictConfig, device: torch.device, seed: int,
            drop_last: bool) -> DataLoader:
    workers = int(data_cfg.get('num_workers', 0))
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=workers, drop_last=drop_last,
                      pin_memory=device.type == 'cuda', generator=torch.Generator().manual_seed(seed),
                      persistent_workers=False)


@torch.no_grad()
def evaluate(model: nn.Module, loader: DataLoader, device: torch.device, precision='32') -> dict:
    """Top-1 / top-5 accuracy (%) and cross-entropy of ``model`` over ``loader``, summed over all processes."""
    model.eval()
    sums = torch.zeros(4, dtype=torch.float64, device=device)  # loss, top1, top5, n
    for i, (x, y) in enumerate(loader):
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        check_batch(x, f"evaluation batch {i}")
        with _autocast(device, precision):
            out = model(x)
        out = out.float()
        k = min(5, out.shape[-1])
        topk = out.topk(k, dim=-1).indices
        sums += torch.stack([nn.functional.cross_entropy(out, y, reduction='sum').double(),
                             (topk[:, 0] == y).sum().double(), (topk == y[:, None]).any(-1).sum().double(),
                             torch.tensor(float(len(y)), dtype=torch.float64, device=device)])
    loss, top1, top5, n = all_reduce_sum(sums).tolist()
    if n == 0:
        raise ValueError("the evaluation data set is empty")
    return {'loss': loss / n, 'acc1': 100.0 * top1 / n, 'acc5': 100.0 * top5 / n, 'n': int(n)}


def _select_frames(x: torch.Tensor, t_train: int) -> torch.Tensor:
    """Keep ``t_train`` randomly chosen frames, in time order, of event frames ``[B, T, C, H, W]``."""
    if x.dim() != 5:
        raise ValueError(f"data.T_train needs event frames [B, T, C, H, W], got shape {tuple(x.shape)}")
    if t_train > x.shape[1]:
        raise ValueError(f"data.T_train={t_train} exceeds the {x.shape[1]} frames of each sample")
    idx = np.sort(np.random.choice(x.shape[1], t_train, replace=False))
    return x[:, torch.from_numpy(idx).to(x.device)]


def _mix(mixup_fn, x: torch.Tensor, y: torch.Tensor):
    """timm's Mixup/CutMix; event frames ``[B, T, C, H, W]`` are mixed as ``[B, T*C, H, W]`` images."""
    if len(x) % 2:
        raise ValueError(f"Mixup/CutMix needs an even batch size, got {len(x)}; change data.batch_size")
    if x.dim() == 5:
        b, t, c, h, w = x.shape
        xm, y = mixup_fn(x.reshape(b, t * c, h, w), y)
        return xm.reshape(b, t, c, h, w), y
    return mixup_fn(x, y)


def _energy_report(model: nn.Module, dataset: Dataset, cfg: dict, device: torch.device) -> Optional[str]:
    """``snnzoo.energy.profile`` on the first test images, as markdown (None when the energy module is absent)."""
    try:
        from snnzoo.energy import profile
    except ImportError:
        log.warning("snnzoo.energy.profile is not available: no energy report")
        return None
    n = min(int(cfg.get('num_images', 16)), len(dataset))
    x = torch.stack([torch.as_tensor(dataset[i][0]) for i in range(n)]).to(device)
    model.eval()
    report = profile(model, x)
    return report.to_markdown()


def _input_config(data_cfg: DictConfig) -> dict:
    """timm's data config (input size, normalisation) of the training data, recorded in the exported config.json."""
    chans, size = int(data_cfg.in_chans), data_cfg.img_size
    mean = std = None
    try:
        from snnzoo.data import dataset_info
        info = dataset_info(data_cfg.name)
        mean, std = info.mean, info.std
    except (ImportError, ValueError):
        pass
    return {'input_size': (chans, size, size) if isinstance(size, int) else (chans, *size),
            'mean': tuple(mean) if mean else (0.0,) * chans, 'std': tuple(std) if std else (1.0,) * chans}


def _command() -> str:
    """The command line of this run: ``snnzoo-train`` and its Hydra overrides."""
    import shlex
    from hydra.core.hydra_config import HydraConfig
    overrides = list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else sys.argv[1:]
    world = int(os.environ.get('WORLD_SIZE', '1'))
    prefix = (f"torchrun --nproc_per_node={os.environ.get('LOCAL_WORLD_SIZE', world)} -m snnzoo.train"
              if world > 1 else 'snnzoo-train')
    return ' '.join([prefix] + [shlex.quote(o) for o in overrides])


def run_training(cfg: DictConfig) -> dict:
    """Train as ``cfg`` says (see configs/train.yaml); returns the final metrics and where the outputs went."""
    info = init_distributed(cfg.trainer.get('device', 'auto'))
    try:
        return _train(cfg, info)
    finally:
        if info.distributed:
            cleanup()


def _train(cfg: DictConfig, info: DistInfo) -> dict:
    import timm.utils
    from timm.data import Mixup
    from timm.optim import create_optimizer_v2
    from timm.scheduler import create_scheduler_v2
    from tqdm.auto import tqdm

    check_config(cfg)
    tr, data_cfg, device = cfg.trainer, cfg.data, info.device
    out_dir = Path(broadcast_object(str(Path(cfg.paths.output_dir).resolve())))
    ckpt_dir = out_dir / 'checkpoints'
    if info.is_main:  # the temporary files of a run killed while saving (this run's folders, the resumed one's)
        resumed = [Path(cfg.ckpt_path).parent, Path(cfg.ckpt_path).parent.parent] if cfg.get('ckpt_path') else []
        for folder in (out_dir, ckpt_dir, *resumed):
            for stale in remove_stale_temporaries(folder):
                log.info(f"removed {stale}, left by an interrupted save")
    if not info.is_main:
        log.setLevel(logging.WARNING)
    if tr.get('num_threads'):
        torch.set_num_threads(int(tr.num_threads))
    if tr.get('deterministic'):
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True
    seed_everything(cfg.seed)

    train_set, test_set = build_dataset(data_cfg, 'train'), build_dataset(data_cfg, 'test')
    model = build_model(cfg.model).to(device)
    if tr.get('recompute_spikes') is not None:
        if not hasattr(model, 'set_recompute_spikes'):
            raise ValueError(f"trainer.recompute_spikes needs a model with set_recompute_spikes (snnzoo's models); "
                             f"{type(model).__name__} has none: wrap its forward in "
                             f"snnzoo.layers.recompute_saved_spikes() instead, or leave the option null")
        model.set_recompute_spikes(bool(tr.recompute_spikes))
    set_grad_mode(model, str(tr.get('grad_mode') or 'bptt'), k=tr.get('sltt_k'), ottt_lambda=tr.get('ottt_lambda'),
                  bn_stats=str(tr.get('bn_stats') or 'sequence'))
    if tr.get('compile') and get_grad_mode(model) in ('sltt', 'ottt'):
        raise ValueError(f"trainer.compile=true cannot be combined with trainer.grad_mode={tr.grad_mode}: the per-step "
                         f"modes change the model's T and neuron state between steps; use grad_mode=bptt or exact "
                         f"with compile, or compile=false")
    if info.distributed and device.type == 'cuda' and tr.get('sync_batchnorm'):
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    n_params = sum(p.numel() for p in model.parameters())
    optimizer = create_optimizer_v2(model, **OmegaConf.to_container(cfg.optim, resolve=True))
    seed_everything(cfg.seed + info.rank)  # same weights on every process, different training noise

    batch_size, accum = int(data_cfg.batch_size), int(tr.get('accum_steps', 1))
    train_items = SeededDataset(train_set, cfg.seed)
    train_sampler = ShardedSampler(len(train_set), info.world_size, info.rank, shuffle=True, seed=cfg.seed)
    train_loader = _loader(train_items, batch_size, train_sampler, data_cfg, device, cfg.seed, drop_last=True)
    test_loader = _loader(test_set, int(data_cfg.get('eval_batch_size', batch_size)),
                          ShardedSampler(len(test_set), info.world_size, info.rank, shuffle=False),
                          data_cfg, device, cfg.seed, drop_last=False)
    updates_per_epoch = len(train_loader) // accum
    if updates_per_epoch == 0:
        raise ValueError(f"data.batch_size={batch_size} x trainer.accum_steps={accum} exceeds the "
                         f"{len(train_sampler)} training samples of each process: lower the batch size")
    scheduler, num_epochs = create_scheduler_v2(
        optimizer, **OmegaConf.to_container(cfg.sched, resolve=True), num_epochs=int(tr.epochs),
        updates_per_epoch=updates_per_epoch)
    if scheduler is None:
        raise ValueError(f"unknown learning-rate schedule sched.sched={cfg.sched.sched!r}; use one of timm's "
                         f"(cosine, step, multistep, poly, tanh) or sched=step with decay_rate=1")
    total_steps = num_epochs * updates_per_epoch
    max_steps = min(int(tr.max_steps), total_steps) if tr.get('max_steps') else total_steps

    loss_cfg = cfg.loss
    mix_cfg = _container(loss_cfg.get('mixup'))
    mixup_off_epoch = mix_cfg.pop('off_epoch', 0) or 0
    mixup_active = bool(mix_cfg) and (mix_cfg.get('mixup_alpha', 0) > 0 or mix_cfg.get('cutmix_alpha', 0) > 0
                                      or mix_cfg.get('cutmix_minmax') is not None)
    mixup_fn = (Mixup(**mix_cfg, label_smoothing=float(loss_cfg.get('smoothing', 0.0)),
                      num_classes=int(data_cfg.num_classes)) if mixup_active else None)
    tet = bool(loss_cfg.get('tet', False))
    criterion = create_loss(smoothing=float(loss_cfg.get('smoothing', 0.0)), mixup_active=mixup_active, tet=tet,
                            tet_lamb=float(loss_cfg.get('tet_lamb', 0.0)),
                            tet_means=float(loss_cfg.get('tet_means', 1.0)))
    t_train = data_cfg.get('T_train')

    ema = None
    ema_cfg = _container(tr.get('ema'))
    if ema_cfg.get('enabled'):
        ema = timm.utils.ModelEmaV3(model, decay=float(ema_cfg.get('decay', 0.9998)),
                                    use_warmup=bool(ema_cfg.get('warmup', False)))
    precision = str(tr.get('precision', '32'))
    autocast = _autocast(device, precision)
    scaler = torch.amp.GradScaler(device.type) if precision == 'fp16' else None

    start_step, last_metrics = 0, {}
    if cfg.get('ckpt_path'):
        state = load_training_state(cfg.ckpt_path)
        try:
            check_state_dict_fits(model, state['model'])
        except RuntimeError as e:
            raise CheckpointError(
                f"{cfg.ckpt_path} was written for another model configuration than this run's ({e}); resume with "
                f"the model settings the checkpoint was trained with, or start a new run from its weights with "
                f"model.checkpoint={cfg.ckpt_path} instead of ckpt_path") from e
        model.load_state_dict(state['model'])
        optimizer.load_state_dict(state['optimizer'])
        scheduler.load_state_dict(state['scheduler'])
        if ema is not None:
            if state.get('ema') is None:
                raise CheckpointError(f"{cfg.ckpt_path} has no EMA weights but trainer.ema.enabled=true")
            ema.load_state_dict(state['ema'])
        if scaler is not None and state.get('scaler'):
            scaler.load_state_dict(state['scaler'])
        if state.get('updates_per_epoch') != updates_per_epoch:
            log.warning(f"the checkpoint was written with {state.get('updates_per_epoch')} steps per epoch, this run "
                        f"has {updates_per_epoch} (batch size or data changed): the resume is not exact")
        if len(state['rng']) == info.world_size:
            restore_rng_state(state['rng'][info.rank])
        else:
            log.warning(f"the checkpoint holds the generator states of {len(state['rng'])} processes, this run has "
                        f"{info.world_size}: generators are re-seeded, the resume is not bit-exact")
        start_step, last_metrics = int(state['global_step']), dict(state.get('metrics') or {})
        log.info(f"resumed from {cfg.ckpt_path} at optimizer step {start_step} "
                 f"(epoch {start_step // updates_per_epoch})")

    ddp_model = None
    if info.distributed:
        ddp_model = nn.parallel.DistributedDataParallel(
            model, device_ids=[device] if device.type == 'cuda' else None,
            find_unused_parameters=bool(tr.get('find_unused_parameters', False)))
    train_model = ddp_model or model
    if tr.get('compile'):
        train_model = torch.compile(train_model)

    config_dict = OmegaConf.to_container(cfg, resolve=True)
    logger = MetricLogger(out_dir, enabled=info.is_main,
                          wandb_cfg=config_dict.get('logger') if cfg.get('logger') else None, config=config_dict)
    global_batch = batch_size * accum * info.world_size
    log.info(f"model {cfg.model.get('name') or cfg.model.get('_target_')}: {n_params / 1e6:.3f} M parameters | "
             f"{len(train_set)} train / {len(test_set)} test samples | global batch {global_batch} "
             f"({info.world_size} process(es) on {device.type}) | {num_epochs} epochs x {updates_per_epoch} steps, "
             f"stop at step {max_steps} | output {out_dir}")

    def save_state(global_step: int, metrics: dict) -> None:
        bad = [n for n, p in model.named_parameters() if not torch.isfinite(p).all()]
        if bad:
            raise NonFiniteLossError(
                f"parameters {', '.join(bad[:5])} became NaN or infinite by optimizer step {global_step}; training "
                f"stopped without overwriting the last checkpoint ({ckpt_dir / 'last.pt'}). Lower optim.lr or set "
                f"trainer.clip_grad")
        rng = all_gather_object(capture_rng_state())
        if info.is_main:
            save_training_state(ckpt_dir / 'last.pt', {
                'model': model.state_dict(), 'optimizer': optimizer.state_dict(),
                'scheduler': scheduler.state_dict(), 'ema': ema.state_dict() if ema is not None else None,
                'scaler': scaler.state_dict() if scaler is not None else None, 'rng': rng,
                'epoch': global_step // updates_per_epoch, 'global_step': global_step,
                'updates_per_epoch': updates_per_epoch, 'config': OmegaConf.to_yaml(cfg, resolve=True),
                'metrics': metrics})
        barrier()

    ckpt_every = int(tr.get('checkpoint_every_n_steps') or 0)
    eval_every = int(tr.get('eval_every_n_epochs') or 0)
    log_every = max(1, int(tr.get('log_every_n_steps', 10)))
    clip = tr.get('clip_grad')
    per_step = get_grad_mode(model) in ('sltt', 'ottt')

    def scale_loss(loss: torch.Tensor) -> torch.Tensor:
        return scaler.scale(loss / accum) if scaler is not None else loss / accum

    def step_sync(last: bool):
        return ddp_model.no_sync() if ddp_model is not None and not last else contextlib.nullcontext()
    global_step = start_step
    train_time = 0.0
    last_saved = (Path(cfg.ckpt_path), start_step) if cfg.get('ckpt_path') else None
    while global_step < max_steps:
        epoch, step_in_epoch = divmod(global_step, updates_per_epoch)
        if mixup_fn is not None and mixup_off_epoch and epoch >= mixup_off_epoch:
            mixup_fn.mixup_enabled = False
        train_items.epoch = epoch
        train_sampler.set_epoch(epoch, step_in_epoch * accum * batch_size)
        steps_now = min(updates_per_epoch, step_in_epoch + max_steps - global_step)
        bar = tqdm(total=updates_per_epoch, initial=step_in_epoch, desc=f"epoch {epoch + 1}/{num_epochs}",
                   disable=not (info.is_main and tr.get('progress_bar', True)), dynamic_ncols=True, leave=False,
                   mininterval=1.0, file=sys.stderr)
        train_model.train()
        sums = torch.zeros(3, dtype=torch.float64, device=device)  # loss x n, correct, n
        t0 = time.perf_counter()
        batches = iter(train_loader)
        while step_in_epoch < steps_now:
            for micro in range(accum):
                x, y = next(batches)
                x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
                check_batch(x, f"training batch {step_in_epoch * accum + micro} of epoch {epoch}")
                if t_train:
                    x = _select_frames(x, int(t_train))
                if mixup_fn is not None:
                    x, y = _mix(mixup_fn, x, y)
                no_sync = ddp_model is not None and micro < accum - 1
                with ddp_model.no_sync() if no_sync else contextlib.nullcontext():
                    if per_step:  # T forward / backward pairs (SLTT, OTTT), gradients synced on the last only
                        out, loss = forward_backward(train_model, x, y, criterion, per_step_output=tet,
                                                     scale=scale_loss, autocast=autocast, sync=step_sync)
                    else:
                        with autocast:
                            out = train_model(x, return_per_step=True) if tet else train_model(x)
                            loss = criterion(out, y)
                    if not torch.isfinite(loss):
                        bar.close()
                        kept = (f"the last good checkpoint {last_saved[0]} (optimizer step {last_saved[1]}) is "
                                f"intact: resume from it with ckpt_path={last_saved[0]}"
                                if last_saved is not None else "no checkpoint had been written yet")
                        raise NonFiniteLossError(
                            f"the training loss is {loss.item()} at epoch {epoch}, optimizer step {global_step}, "
                            f"micro-batch {micro}; training stopped and wrote no checkpoint, {kept}. Lower optim.lr, "
                            f"set trainer.clip_grad, or train with trainer.precision=32")
                    if not per_step:
                        scale_loss(loss).backward()
                logits = out.mean(0) if tet else out
                target = y.argmax(-1) if y.dim() == 2 else y
                n = len(y)
                sums += torch.stack([loss.detach().double() * n, (logits.argmax(-1) == target).sum().double(),
                                     torch.tensor(float(n), dtype=torch.float64, device=device)])
            if clip:
                if scaler is not None:
                    scaler.unscale_(optimizer)
                timm.utils.dispatch_clip_grad(model.parameters(), float(clip), mode=tr.get('clip_mode', 'norm'))
            if scaler is not None:
                scaler.step(optimizer)
                scaler.update()
            else:
                optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            global_step += 1
            step_in_epoch += 1
            if ema is not None:
                ema.update(model, step=global_step)
            scheduler.step_update(num_updates=global_step)
            bar.update(1)
            if step_in_epoch % log_every == 0 or step_in_epoch == steps_now:
                bar.set_postfix(loss=f"{sums[0].item() / max(sums[2].item(), 1):.4f}",
                                lr=f"{optimizer.param_groups[0]['lr']:.2e}")
            if ckpt_every and global_step % ckpt_every == 0 and global_step < max_steps:
                save_state(global_step, last_metrics)
                last_saved = (ckpt_dir / 'last.pt', global_step)
        bar.close()
        elapsed = time.perf_counter() - t0
        train_time += elapsed
        tot = all_reduce_sum(sums).tolist()
        seen = max(tot[2], 1)
        metrics = {'epoch': epoch + 1, 'train_loss': tot[0] / seen, 'train_acc': 100 * tot[1] / seen,
                   'lr': optimizer.param_groups[0]['lr'], 'img_per_s': tot[2] / elapsed if elapsed else 0.0,
                   'epoch_time_s': elapsed, 'peak_mem_mb': peak_memory_mb(device)}
        epoch_done = step_in_epoch == updates_per_epoch
        if epoch_done:
            scheduler.step(epoch + 1)
            if eval_every and (epoch + 1) % eval_every == 0 and global_step < max_steps:
                ev = evaluate(ema.module if ema is not None else model, test_loader, device, precision)
                metrics.update(test_loss=ev['loss'], test_acc=ev['acc1'], test_acc5=ev['acc5'])
        logger.log(metrics, step=global_step)
        log.info(' | '.join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in metrics.items()))
        if epoch_done or global_step >= max_steps:
            save_state(global_step, metrics)
            last_metrics = metrics
            last_saved = (ckpt_dir / 'last.pt', global_step)

    final_model = ema.module if ema is not None else model
    ev = evaluate(final_model, test_loader, device, precision)
    result = {'test_acc': ev['acc1'], 'test_acc5': ev['acc5'], 'test_loss': ev['loss'], 'n_test': ev['n'],
              'global_step': global_step, 'epochs': global_step / updates_per_epoch, 'train_time_s': train_time,
              'img_per_s': global_step * global_batch / train_time if train_time else 0.0,
              'peak_mem_mb': peak_memory_mb(device), 'params': n_params, 'output_dir': str(out_dir)}
    if global_step < total_steps:
        log.info(f"stopped at step {global_step} of {total_steps} (trainer.max_steps)")
    log.info(f"test accuracy {ev['acc1']:.2f}% (top-5 {ev['acc5']:.2f}%) on {ev['n']} images"
             f"{' with the EMA weights' if ema is not None else ''} | {result['img_per_s']:.1f} img/s | "
             f"peak memory {result['peak_mem_mb']:.0f} MiB")
    if info.is_main:
        weights = export_model(final_model, out_dir, model_cfg=OmegaConf.to_container(cfg.model, resolve=True),
                               extra={'data': OmegaConf.to_container(data_cfg, resolve=True),
                                      'metrics': {k: result[k] for k in ('test_acc', 'test_acc5', 'n_test')},
                                      'command': _command()},
                               data_config=_input_config(data_cfg))
        result['weights'] = str(weights)
        log.info(f"weights: {weights} (+ config.json); evaluate with: snnzoo-eval checkpoint={out_dir}")
        energy_cfg = _container(cfg.get('energy'))
        if energy_cfg.get('enabled', True):
            report = _energy_report(final_model, test_set, energy_cfg, device)
            if report:
                log.info(f"energy report:\n{report}")
                result['energy_report'] = report
        logger.summary({k: v for k, v in result.items() if isinstance(v, (int, float))})
    logger.close()
    return result


def run_evaluation(cfg: DictConfig) -> dict:
    """Evaluate an exported checkpoint (folder or .safetensors) or a training checkpoint (``last.pt``)."""
    info = init_distributed(cfg.get('device', 'auto'))
    try:
        return _evaluate(cfg, info)
    finally:
        if info.distributed:
            cleanup()


def _evaluate(cfg: DictConfig, info: DistInfo) -> dict:
    device = info.device
    from snnzoo.layers import set_backend
    path = Path(cfg.checkpoint)
    trained = load_trained_model(path, trust_config=bool(cfg.get('trust_config', False)),
                                 use_ema=cfg.get('use_ema', True))
    model = trained.model
    if cfg.get('backend'):
        set_backend(model, cfg.backend)
    model.to(device)
    if cfg.get('data') is not None:  # the command line's data group: the user's own config
        data_cfg = cfg.data
        test_set = build_dataset(data_cfg, 'test')
    else:
        data_cfg = OmegaConf.create({'num_workers': 0})
        test_set = trained.build_test_set()
    loader = _loader(test_set, int(cfg.get('batch_size', 256)),
                     ShardedSampler(len(test_set), info.world_size, info.rank, shuffle=False), data_cfg, device,
                     0, drop_last=False)
    t0 = time.perf_counter()
    ev = evaluate(model, loader, device, cfg.get('precision', '32'))
    elapsed = time.perf_counter() - t0
    result = {'test_acc': ev['acc1'], 'test_acc5': ev['acc5'], 'test_loss': ev['loss'], 'n_test': ev['n'],
              'img_per_s': ev['n'] / elapsed, 'peak_mem_mb': peak_memory_mb(device)}
    log.info(f"{path}: test accuracy {ev['acc1']:.2f}% (top-5 {ev['acc5']:.2f}%, loss {ev['loss']:.4f}) on "
             f"{ev['n']} images | {result['img_per_s']:.1f} img/s")
    energy_cfg = _container(cfg.get('energy'))
    if info.is_main and energy_cfg.get('enabled', True):
        report = _energy_report(model, test_set, energy_cfg, device)
        if report:
            log.info(f"energy report:\n{report}")
            result['energy_report'] = report
    return result
