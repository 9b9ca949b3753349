"""CPU inference (eval-mode forward) time per image: snnzoo eager, fused, ``torch.compile``d and onnxruntime, side by
side in one run with SpikingJelly 2.0's same model in eval mode (and with its own conv-BN fusion,
``functional.fuse_conv_bn_eval_modules``, where its torch.fx trace of the model succeeds).

The models are bench_models.py's cases (same SpikingJelly builders); T=4. Every path is built first (the ONNX file is
exported, torch.compile warmed up: its first two calls are timed as ``compile_s``; a compilation that runs past
``--compile-timeout`` seconds is abandoned and said so in the row's ``compile`` field), then rounds of one forward per
path run in turn (interleaved, so that the drifts of a shared machine hit every path alike); the figure is the median
over rounds, per image. Ratios are to SpikingJelly's best path (fused where it fuses, else eager). Also records the
ONNX file size against the parameters' bytes, and each case's date and load average (``--merge`` keeps the rows of
other cases from an earlier run).

    python benchmarks/bench_inference.py [--cases sew_resnet18@64 ...] [--rounds 7] [--batch 4] [--no-compile]
                                         [--compile-timeout 900] [--merge]

Writes ``benchmarks/results/bench_inference_cpu.json``.
"""
import argparse
import json
import os
import signal
import statistics
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

from _results import DEFAULT_OUT, machine, write_result
from bench_models import CASES, build

DEFAULT_CASES = ['sew_resnet18@64', 'ms_resnet18@64', 'spikformer_4_384_cifar', 'sdt_8_384@64', 'qkformer_10_384@64']


def snnzoo_paths(case: str, x: torch.Tensor, tmp: Path, compile_: bool) -> dict:
    """name -> forward(x) for snnzoo's paths, plus the ONNX file's size."""
    from snnzoo.export import fuse, to_onnx
    import onnxruntime as ort
    model, _, _ = build('snnzoo', case, 10)
    model.eval()
    fused = fuse(model, x)
    paths = {'snnzoo eager': model, 'snnzoo fused': fused}
    if compile_:
        paths['snnzoo compiled'] = torch.compile(fused)
    t = time.perf_counter()
    onnx_path = to_onnx(model, tmp / f'{case}.onnx', sample=x, fuse=True)
    export_s = time.perf_counter() - t
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = torch.get_num_threads()
    session = ort.InferenceSession(str(onnx_path), opts, providers=['CPUExecutionProvider'])
    name = session.get_inputs()[0].name
    paths['snnzoo onnxruntime'] = lambda inp: torch.from_numpy(session.run(None, {name: inp.numpy()})[0])
    param_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    info = dict(onnx_bytes=onnx_path.stat().st_size, param_bytes=param_bytes,
                onnx_size_ratio=onnx_path.stat().st_size / param_bytes, onnx_export_s=export_s)
    return paths, info


def spikingjelly_paths(case: str, x: torch.Tensor) -> tuple:
    from spikingjelly.activation_based import functional
    model, forward, reset = build('spikingjelly', case, 10)
    model.eval()

    def run(fwd):
        def f(inp):
            out = fwd(inp)
            reset()
            return out
        return f

    paths = {'spikingjelly eager': run(forward)}
    note = None
    try:
        from spikingjelly.activation_based.functional.conv_bn_fusion import fuse_conv_bn_eval_modules
        fused = fuse_conv_bn_eval_modules(model)
        with torch.no_grad():   # a first call: fails here where the fused model does not run
            fused(_sj_input(case, x, model)), forward(x)
        reset()
        functional.reset_net(fused)
        paths['spikingjelly fused'] = run(lambda inp: _sj_forward(case, fused, inp, model))
        note = 'fused'
    except Exception as e:   # its fx trace does not follow every model
        note = f'no fusion: {type(e).__name__}: {str(e).splitlines()[0][:160]}'
    return paths, note


def _sj_input(case, x, model):
    T = CASES[case][3]
    return x.unsqueeze(0).repeat(T, 1, 1, 1, 1) if getattr(model, 'T', None) is None else x


def _sj_forward(case, fused, x, model):
    from spikingjelly.activation_based import functional
    out = fused(_sj_input(case, x, model))
    functional.reset_net(fused)
    return out.mean(0) if out.dim() == 3 else out


def _warm_compiled(f, x, timeout_s: int) -> dict:
    """Call a ``torch.compile``d path twice (compiling it) under an alarm of ``timeout_s`` seconds."""
    fired = []

    def expire(signum, frame):
        fired.append(True)
        raise TimeoutError(f'compiling took over {timeout_s} s')

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(timeout_s)
    t = time.perf_counter()
    try:
        f(x), f(x)
        return dict(compile='ok', compile_s=time.perf_counter() - t)
    except Exception:
        if not fired:       # inductor wraps the alarm's TimeoutError in its own error
            raise
        torch._dynamo.reset()
        return dict(compile=f'abandoned: compiling took over {timeout_s} s', compile_s=None)
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def time_case(case: str, rounds: int, batch: int, compile_: bool, compile_timeout: int = 900) -> dict:
    shape = CASES[case][2]
    torch.manual_seed(0)
    x = torch.randn(batch, *shape)
    with tempfile.TemporaryDirectory() as tmp, torch.no_grad():
        paths, info = snnzoo_paths(case, x, Path(tmp), compile_)
        sj, note = spikingjelly_paths(case, x)
        paths.update(sj)
        if compile_:
            info.update(_warm_compiled(paths['snnzoo compiled'], x, compile_timeout))
            if info['compile'] != 'ok':
                del paths['snnzoo compiled']
        for f in paths.values():          # warm-up (oneDNN / onnxruntime first calls)
            f(x), f(x)
        times = {k: [] for k in paths}
        for _ in range(rounds):
            for k, f in paths.items():
                t = time.perf_counter()
                f(x)
                times[k].append((time.perf_counter() - t) / batch * 1e3)
    ms = {k: statistics.median(v) for k, v in times.items()}
    sj_best = min(v for k, v in ms.items() if k.startswith('spikingjelly'))
    zoo_best_path = min((k for k in ms if k.startswith('snnzoo')), key=ms.get)
    return dict(case=case, date=datetime.now(timezone.utc).isoformat(timespec='seconds'), load_avg=os.getloadavg(),
                batch=batch, T=CASES[case][3], ms_per_image=ms, spikingjelly_fusion=note,
                best_snnzoo_path=zoo_best_path, best_ratio=ms[zoo_best_path] / sj_best,
                ratios_to_spikingjelly_best={k: v / sj_best for k, v in ms.items()}, **info)


def main():
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--cases', nargs='*', default=DEFAULT_CASES)
    p.add_argument('--rounds', type=int, default=7)
    p.add_argument('--batch', type=int, default=4)
    p.add_argument('--no-compile', action='store_true')
    p.add_argument('--compile-timeout', type=int, default=900, help='seconds allowed to compile one case')
    p.add_argument('--out', default=DEFAULT_OUT)
    p.add_argument('--merge', action='store_true', help="keep the other cases' rows of the existing JSON file")
    args = p.parse_args()
    old = Path(args.out) / 'bench_inference_cpu.json'
    rows = [r for r in json.loads(old.read_text())['rows'] if r['case'] not in args.cases] \
        if args.merge and old.exists() else []
    for case in args.cases:
        row = time_case(case, args.rounds, args.batch, not args.no_compile, args.compile_timeout)
        rows.append(row)
        cells = ' | '.join(f"{k} {v:.1f}" for k, v in row['ms_per_image'].items())
        print(f"{case}: {cells} ms/image; best {row['best_snnzoo_path']} {row['best_ratio']:.2f}x SpikingJelly; "
              f"ONNX {row['onnx_bytes'] / 1e6:.1f} MB = {row['onnx_size_ratio']:.2f}x params; "
              f"SJ {row['spikingjelly_fusion']}; compile {row.get('compile', 'off')} "
              f"({row.get('compile_s') or 0:.0f} s)", flush=True)
        write_result(args.out, 'bench_inference_cpu.json', 'bench_inference', machine(),   # after every case
                     rounds=args.rounds, batch=args.batch, compiled=not args.no_compile,
                     compile_timeout_s=args.compile_timeout, threads=torch.get_num_threads(), rows=rows)


if __name__ == '__main__':
    main()
