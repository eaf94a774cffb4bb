#!/usr/bin/env bash
# One command for a machine with an NVIDIA GPU: fastnet's CUDA tests on the GPU, the CUDA
# benchmarks against PyTorch CUDA (when installed), short CUDA training runs, then ONE
# summary table. Every step runs (a failing one does not stop the rest) under its own
# timeout, all within about 8 minutes. Exit status: 0 when every step passed, 1 when one
# failed or timed out, 2 when there is no GPU (or fastnet cannot be imported).
#
#   bash benchmarks/gpu_check.sh                       # from anywhere; runs in the repo root
#   PYTHON=/path/to/python bash benchmarks/gpu_check.sh
#
# It uses the current Python environment and installs nothing (a GPU machine may have no
# network); if imports fail it says what to install. Logs go to $GPU_CHECK_DIR (default a
# new temporary directory), printed at the end.
#
# FASTNET_GPU_CHECK_SIM=1 runs the same logic in Numba's CUDA simulator (no GPU needed)
# with tiny sizes: a check of this script, not of a GPU (the simulator trains too slowly
# for the training step to finish, so there it runs on the CPU unless
# GPU_CHECK_TRAIN_DEVICE=cuda).
# Overrides: GPU_CHECK_TESTS_S, GPU_CHECK_BENCH_S, GPU_CHECK_TRAIN_S (seconds per step),
# GPU_CHECK_TESTS (pytest arguments after -m cuda, default "tests"),
# GPU_CHECK_BENCH_FILTER (simulator: the cases of cuda_bench.py to run).
set -u
cd "$(dirname "$0")/.." || exit 2
PY=${PYTHON:-python}
SIM=${FASTNET_GPU_CHECK_SIM:-0}
OUT=${GPU_CHECK_DIR:-$(mktemp -d "${TMPDIR:-/tmp}/fastnet-gpu-check.XXXXXX")}
mkdir -p "$OUT"
: > "$OUT/steps.tsv"
START=$SECONDS
BUDGET=${GPU_CHECK_BUDGET_S:-440}  # all steps; with the checks before and the kill grace: < 8 min

if [ "$SIM" = 1 ]; then
    export NUMBA_ENABLE_CUDASIM=1
    TESTS_S=${GPU_CHECK_TESTS_S:-240}; BENCH_S=${GPU_CHECK_BENCH_S:-150}; TRAIN_S=${GPU_CHECK_TRAIN_S:-40}
    TESTS=${GPU_CHECK_TESTS:-tests/kernels/cuda/test_optim.py}
    BENCH_ARGS=(--quick --repeat 1 --no-torch --filter "${GPU_CHECK_BENCH_FILTER:-launch}")
    TRAIN_LENET=(--model mlp --epochs 1 --batch-size 1024 --val-fraction 0)
    TRAIN_SMALL=()
else
    TESTS_S=${GPU_CHECK_TESTS_S:-210}; BENCH_S=${GPU_CHECK_BENCH_S:-150}; TRAIN_S=${GPU_CHECK_TRAIN_S:-60}
    TESTS=${GPU_CHECK_TESTS:-tests}
    BENCH_ARGS=(--repeat 10)
    TRAIN_LENET=(--epochs 3)
    TRAIN_SMALL=(--model mlp --epochs 2)
fi

# ---- 0. the environment -------------------------------------------------------------
if [ "$SIM" != 1 ] && ! command -v nvidia-smi >/dev/null 2>&1 && [ ! -e /dev/nvidia0 ] \
        && [ ! -e /dev/nvidiactl ]; then
    echo "gpu_check: no NVIDIA GPU here (no nvidia-smi, no /dev/nvidia*): nothing to check." >&2
    echo "gpu_check: (FASTNET_GPU_CHECK_SIM=1 runs this script in Numba's CUDA simulator)" >&2
    exit 2
fi
if ! "$PY" -c "import numpy, numba, fastnet" >"$OUT/imports.log" 2>&1; then
    tail -n 5 "$OUT/imports.log" >&2
    echo "gpu_check: $PY cannot import numpy, numba and fastnet. In the repo root:" >&2
    echo '    pip install -e ".[test,train,cuda]"     # or, offline, from a wheelhouse:' >&2
    echo '    pip install --no-index --find-links WHEELS -e ".[test,train,cuda]"' >&2
    exit 2
fi
# (a marked line: a warning printed on stdout or stderr must not read as the reason)
REASON=$("$PY" -c "import fastnet; print('REASON:' + (fastnet.cuda.unavailable_reason() or ''))" \
    2>/dev/null | grep '^REASON:' | tail -n 1 | cut -c8-)
if [ -n "$REASON" ]; then
    echo "gpu_check: fastnet cannot use a GPU here: $REASON" >&2
    echo '(numba-cuda comes with: pip install -e ".[cuda]"; PyTorch with CUDA is optional)' >&2
    exit 2
fi
"$PY" - <<'EOF' | tee "$OUT/env.log"
import importlib.util, platform
import numba, numpy, fastnet
print(f"python {platform.python_version()}, numpy {numpy.__version__}, numba {numba.__version__}, "
      f"fastnet {fastnet.__version__} from {fastnet.__file__}")
if fastnet.cuda.simulator():
    print("GPU: none, Numba's CUDA simulator (FASTNET_GPU_CHECK_SIM=1)")
else:
    from numba import cuda
    d = cuda.get_current_device()
    name = d.name.decode() if isinstance(d.name, bytes) else d.name
    print(f"GPU: {name}, compute capability {d.compute_capability}")
if importlib.util.find_spec("pytest") is None:
    print("note: pytest is missing (pip install pytest): the tests step will fail")
if importlib.util.find_spec("torch") is None:
    print("note: PyTorch is not installed: no PyTorch column")
else:
    import torch
    print(f"torch {torch.__version__}, CUDA {'available' if torch.cuda.is_available() else 'NOT available'}")
EOF

# ---- the steps ------------------------------------------------------------------------
# step NAME LIMIT_S CMD...: run CMD with a timeout (cut to what is left of the budget),
# its output in $OUT/NAME.log; one line to steps.tsv: name, exit status, seconds
step() {
    local name=$1 limit=$2
    shift 2
    local left=$((BUDGET - (SECONDS - START)))
    if [ "$left" -lt 10 ]; then
        printf '%s\t%s\t%s\n' "$name" "skipped" 0 >> "$OUT/steps.tsv"
        echo "== $name: skipped, the time budget is spent"
        return
    fi
    [ "$limit" -gt "$left" ] && limit=$left
    echo "== $name (at most ${limit} s): $*"
    local t0=$SECONDS
    # SIGINT first: pytest then writes its report of the tests run so far, and the
    # training CLI saves its state (exit status 124 either way: a timeout)
    timeout --signal=INT --kill-after=10 "$limit" "$@" > "$OUT/$name.log" 2>&1
    local rc=$?
    printf '%s\t%s\t%s\n' "$name" "$rc" $((SECONDS - t0)) >> "$OUT/steps.tsv"
    if [ "$rc" -ne 0 ]; then
        echo "   exit status $rc; the end of $OUT/$name.log:"
        tail -n 15 "$OUT/$name.log" | sed 's/^/   | /'
    fi
}

# (a) every test marked cuda, on the GPU
# shellcheck disable=SC2086
step tests "$TESTS_S" "$PY" -m pytest -m cuda $TESTS -q -p no:cacheprovider \
    --junitxml="$OUT/tests.xml"
# (b) the CUDA benchmarks, fastnet against PyTorch CUDA when installed
step bench "$BENCH_S" "$PY" benchmarks/cuda_bench.py "${BENCH_ARGS[@]}" --json "$OUT/bench.json"
# (c) short CUDA training runs on the embedded digits
# (the simulator trains too slowly to finish: there the step runs on the CPU by default)
TRAIN_DEVICE=${GPU_CHECK_TRAIN_DEVICE:-$([ "$SIM" = 1 ] && echo cpu || echo cuda)}
step train "$TRAIN_S" "$PY" -m fastnet train --device "$TRAIN_DEVICE" --no-progress \
    --out "$OUT/train" "${TRAIN_LENET[@]}"
if [ ${#TRAIN_SMALL[@]} -gt 0 ]; then
    step train-mlp 40 "$PY" -m fastnet train --device "$TRAIN_DEVICE" --no-progress \
        --out "$OUT/train-mlp" "${TRAIN_SMALL[@]}"
fi

# ---- the summary ----------------------------------------------------------------------
"$PY" - "$OUT" <<'EOF'
import json, os, re, sys
import xml.etree.ElementTree as ET

out = sys.argv[1]
rows, failed = [], False
for line in open(os.path.join(out, "steps.tsv")):
    name, rc, seconds = line.rstrip("\n").split("\t")
    status = {"0": "ok", "124": "TIMEOUT", "137": "TIMEOUT", "skipped": "SKIPPED"}.get(rc, f"FAIL ({rc})")
    failed |= status != "ok"
    figures = ""
    if name == "tests":
        try:
            suites = ET.parse(os.path.join(out, "tests.xml")).getroot()
            suites = [suites] if suites.tag == "testsuite" else list(suites)
            count = {k: sum(int(s.get(k, 0)) for s in suites)
                     for k in ("tests", "failures", "errors", "skipped")}
            passed = count["tests"] - count["failures"] - count["errors"] - count["skipped"]
            figures = (f"{passed} passed, {count['failures']} failed, {count['errors']} errors, "
                       f"{count['skipped']} skipped")
            if count["tests"] == 0:
                figures += " (no test is marked cuda)"
        except (OSError, ET.ParseError):
            figures = "no test report"
        if rc == "5":
            status, figures = "FAIL (5)", "no test selected by -m cuda"
    elif name == "bench":
        try:
            bench = json.load(open(os.path.join(out, "bench.json")))
            ok = sum(r["status"] == "ok" for r in bench["rows"])
            ratios = [r["ratio"] for r in bench["rows"] if "ratio" in r]
            figures = f"{ok}/{bench['cases']} cases ok on {bench['gpu']}"
            if not bench["complete"]:
                figures += f" (stopped after {len(bench['rows'])})"
            if ratios:
                wins = sum(r >= 1 for r in ratios)
                figures += f"; fastnet faster than PyTorch in {wins}/{len(ratios)}"
            elif not bench["torch"]:
                figures += "; no PyTorch CUDA"
        except (OSError, ValueError, KeyError):
            figures = "no results"
    elif name.startswith("train"):
        try:
            m = json.load(open(os.path.join(out, name, "metrics.json")))
            last = m["history"][-1]
            rate = last.get("samples_per_s")
            acc = (m.get("test") or {}).get("acc")
            figures = (f"{m['config']['model']} on {m['config']['device']}, "
                       f"{len(m['history'])} epoch(s): "
                       + (f"test acc {100 * acc:.2f}%" if acc is not None else "no test accuracy")
                       + (f", {rate:.0f} samples/s (last epoch)" if rate else ""))
        except (OSError, ValueError, KeyError, IndexError, TypeError):
            figures = "no metrics"
    rows.append((name, status, seconds, figures))

print("\n" + "=" * 100)
print("fastnet GPU check: " + open(os.path.join(out, "env.log")).read().strip().replace("\n", "; "))
width = max(len(r[0]) for r in rows) if rows else 5
print(f"{'step'.ljust(width)}  {'status':<11} {'seconds':>7}  key figures")
for name, status, seconds, figures in rows:
    print(f"{name.ljust(width)}  {status:<11} {seconds:>7}  {figures}")
try:
    bench = json.load(open(os.path.join(out, "bench.json")))
except (OSError, ValueError):
    bench = None
if bench and bench["rows"]:
    w = max(len(r["case"]) for r in bench["rows"])
    print(f"\nCUDA cases ({bench['gpu']}; ratio = PyTorch ms / fastnet ms, > 1: fastnet faster)")
    print(f"  {'case'.ljust(w)}  {'fastnet ms':>10}  {'torch ms':>10}  {'ratio':>6}  check")
    for r in bench["rows"]:
        f = lambda k, fmt: format(r[k], fmt) if k in r else "-"
        print(f"  {r['case'].ljust(w)}  {f('fastnet_ms', '.4g'):>10}  {f('torch_ms', '.4g'):>10}  "
              f"{f('ratio', '.2f'):>6}  {r['status']}" + (f": {r['error']}" if "error" in r else ""))
print(f"\nlogs: {out}")
print("RESULT: " + ("FAILED (see the steps above)" if failed else "all steps passed"))
sys.exit(1 if failed else 0)
EOF
