#!/usr/bin/env bash
# bench/gpu_check.sh [WHEELS_DIR]: the GPU loader path, checked and measured on a machine with one NVIDIA GPU.
#
# For a machine with Python 3.12 and CUDA builds of torch, torchvision and tensorstore preinstalled,
# no network, and only the small wheels `make gpu-wheels` puts in WHEELS_DIR (default
# bench/work/gpu-wheels: ddpipe itself, zarr, numcodecs, tqdm, pytest and what they need; tens of MB).
# Run it from anywhere; it works in the repository it belongs to:
#
#   make gpu-wheels                     # here, with network: the wheels for Python 3.12
#   bench/gpu_check.sh                  # there: install, test, measure (under 8 minutes)
#
# It installs the wheels into a virtualenv that sees the preinstalled packages (--system-site-packages),
# runs the GPU path's equivalence test against the torch reference (tests/test_pipeline_batched.py:
# the resident decoded set + batched crop-resize-flip + normalise + mix on CUDA, mean error <= 1/255),
# then `ddpipe bench loader --device gpu` (sre2l-baseline, cache-cpu, gpu; the DALI rows only where
# DALI is already installed: its ~800 MB wheel is not brought along). Everything it writes goes to
# OUT (default bench/results): gpu-check-<time>.json (environment, test outcome, the bench's JSON,
# timings), the bench's own loader-<time>.json and the logs. Exit status: 0 when the test passed and
# the bench ran; the numbers belong in the README's loader table.
set -uo pipefail

cd "$(dirname "$0")/.."
WHEELS=${1:-${WHEELS:-bench/work/gpu-wheels}}
OUT=${OUT:-bench/results}
PY=${PYTHON:-python3}
VENV=${GPU_VENV:-bench/work/venv-gpu}
WORKERS=${WORKERS:-2}
IMAGES=${IMAGES:-5000}
REPEATS=${REPEATS:-3}
STAMP=$(date -u +%Y%m%dT%H%M%SZ)
START=$SECONDS
mkdir -p "$OUT"
LOG="$OUT/gpu-check-$STAMP.log"
log() { echo "[gpu_check +$((SECONDS - START))s] $*" | tee -a "$LOG" >&2; }

log "python: $($PY -c 'import sys; print(sys.version.split()[0])')"
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee -a "$LOG"

# 1. install what was brought along (no network): a venv over the preinstalled CUDA torch
if [ ! -x "$VENV/bin/python" ]; then
  $PY -m venv --system-site-packages "$VENV" || { log "cannot create $VENV"; exit 2; }
fi
VPY="$VENV/bin/python"
if ! ls "$WHEELS"/ddpipe-*.whl >/dev/null 2>&1; then
  log "no ddpipe wheel in $WHEELS: run 'make gpu-wheels' where there is network and bring $WHEELS along"
  exit 2
fi
$VPY -m pip install -q --no-index --find-links "$WHEELS" ddpipe pytest 2>&1 | tee -a "$LOG"
$VPY -m pip install -q --no-index --no-deps --force-reinstall "$WHEELS"/ddpipe-*.whl 2>&1 | tee -a "$LOG"
ENV_JSON=$($VPY - <<'EOF'
import importlib.util, json, torch, torchvision
d = {"torch": torch.__version__, "torchvision": torchvision.__version__, "cuda": torch.version.cuda,
     "cuda_available": torch.cuda.is_available(),
     "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
     "dali": importlib.util.find_spec("nvidia.dali") is not None,
     "tensorstore": importlib.util.find_spec("tensorstore") is not None}
print(json.dumps(d))
EOF
)
log "environment: $ENV_JSON"
if ! $VPY -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)'; then
  log "CUDA is not available to torch here: nothing to check"
  exit 2
fi

# 2. the equivalence test of the GPU path against the torch reference (and the CPU twins of it)
log "equivalence test (tests/test_pipeline_batched.py)"
T0=$SECONDS
timeout 240 $VPY -m pytest -q -x -p no:cacheprovider -s tests/test_pipeline_batched.py \
  -k "gpu_path or resize_matrices or device_selection" 2>&1 | tee "$OUT/gpu-check-$STAMP-tests.log"
TEST_RC=${PIPESTATUS[0]}
TEST_S=$((SECONDS - T0))
log "tests: exit $TEST_RC in ${TEST_S}s"

# 3. the loader bench with the GPU rows (DALI's rows where DALI is installed)
log "ddpipe bench loader --device gpu ($IMAGES images, $REPEATS rounds, $WORKERS workers)"
T0=$SECONDS
timeout 360 "$VENV/bin/ddpipe" bench loader --device gpu --images "$IMAGES" --repeats "$REPEATS" \
  --workers "$WORKERS" --results-dir "$OUT" --json >"$OUT/gpu-check-$STAMP-bench.json" 2> >(tee -a "$LOG" >&2)
BENCH_RC=$?
BENCH_S=$((SECONDS - T0))
log "bench: exit $BENCH_RC in ${BENCH_S}s"

# 4. one JSON with everything
$VPY - "$OUT/gpu-check-$STAMP.json" "$OUT/gpu-check-$STAMP-bench.json" "$ENV_JSON" "$TEST_RC" "$TEST_S" \
  "$BENCH_RC" "$BENCH_S" "$((SECONDS - START))" <<'EOF'
import json, os, sys
out, bench_path, env, test_rc, test_s, bench_rc, bench_s, total = sys.argv[1:]
try:
    bench = json.load(open(bench_path))
except (OSError, ValueError):
    bench = None
summary = {"check": "gpu", "environment": json.loads(env), "load_average": os.getloadavg(),
           "equivalence_test": {"exit_status": int(test_rc), "passed": int(test_rc) == 0, "seconds": int(test_s)},
           "bench": {"exit_status": int(bench_rc), "seconds": int(bench_s), "result": bench},
           "total_seconds": int(total)}
json.dump(summary, open(out, "w"), indent=1)
if bench:
    print(f"{'row':>16} {'images/s':>10} {'x baseline':>10}")
    for r in bench["rows"]:
        sp = r.get("speedup")
        print(f"{r['backend']:>16} {r['images_per_s']:>10,.0f} {sp if sp is None else round(sp, 2):>10}")
    print("targets:", bench.get("targets"))
print("wrote", out)
EOF
log "done in $((SECONDS - START))s"
[ "$TEST_RC" = 0 ] && [ "$BENCH_RC" = 0 ]
