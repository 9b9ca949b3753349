"""The JSON file every benchmark writes to ``benchmarks/results/`` (or ``$OUT``): what ran, where, when, its rows."""
import json
import os
import platform
from datetime import datetime, timezone
from pathlib import Path

import torch

DEFAULT_OUT = os.environ.get('OUT') or str(Path(__file__).parent / 'results')


def machine(**extra) -> dict:
    """The host's platform, processor, core count and torch threads, plus ``extra`` (e.g. the GPU)."""
    return dict(platform=platform.platform(), processor=platform.processor() or platform.machine(),
                cpu_count=os.cpu_count(), threads=torch.get_num_threads(), **extra)


def write_result(out_dir: str, filename: str, benchmark: str, machine_info: dict, **fields) -> Path:
    """Write ``{benchmark, date, machine, **fields}`` as indented JSON to ``out_dir/filename``; returns the path."""
    result = dict(benchmark=benchmark, date=datetime.now(timezone.utc).isoformat(timespec='seconds'),
                  machine=machine_info, **fields)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / filename
    path.write_text(json.dumps(result, indent=2) + '\n')
    print(f"wrote {path}")
    return path
