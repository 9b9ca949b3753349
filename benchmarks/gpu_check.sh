#!/usr/bin/env bash
# The GPU check, one command: every `cuda`-marked test and benchmarks/bench_cuda.py, with the device's name, into $OUT.
# Here (with network), once:  bash ../shared/tools/device-wheels.sh      (wheels the GPU image lacks, into .whl/)
# On the GPU machine (carry .whl):  bash benchmarks/gpu_check.sh
# Writes $OUT/gpu_check.json (device, capability, versions, pytest exit status and counts), pytest_cuda.xml / .txt,
# bench_cuda.txt and bench_cuda_<device>.json. Exits with pytest's status.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-benchmarks/results}
mkdir -p "$OUT"
if compgen -G '.whl/*.whl' > /dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site:$PWD
else
  export PYTHONPATH=$PWD
fi
python3 -m pytest -q -m cuda tests -p no:cacheprovider --junitxml="$OUT/pytest_cuda.xml" > "$OUT/pytest_cuda.txt" 2>&1
status=$?
tail -n 30 "$OUT/pytest_cuda.txt"
python3 benchmarks/bench_cuda.py --out "$OUT" 2>&1 | tee "$OUT/bench_cuda.txt"
python3 - "$OUT" "$status" <<'PY'
import json, sys, xml.etree.ElementTree as ET
import torch
out, status = sys.argv[1], int(sys.argv[2])
suite = ET.parse(f'{out}/pytest_cuda.xml').getroot().find('testsuite')
counts = {k: int(suite.get(k, 0)) for k in ('tests', 'failures', 'errors', 'skipped')}
try:
    import cupy
    cupy_version = cupy.__version__
except Exception as error:  # reported, not fatal: the tests say what failed
    cupy_version = f'unusable: {error}'
info = dict(device=torch.cuda.get_device_name() if torch.cuda.is_available() else None,
            capability=list(torch.cuda.get_device_capability()) if torch.cuda.is_available() else None,
            torch=torch.__version__, cuda=torch.version.cuda, cupy=cupy_version, pytest_exit_status=status, **counts)
json.dump(info, open(f'{out}/gpu_check.json', 'w'), indent=1)
print(json.dumps(info))
PY
exit $status
