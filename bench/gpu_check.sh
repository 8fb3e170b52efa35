#!/usr/bin/env bash
# The GPU check, for the day a CUDA machine is at hand (the machines this project was built on have none). From the
# repository root, with .venv holding a CUDA build of torch (the lock pins the CPU build, torch==2.13.0+cpu: install
# the same version's CUDA wheel into the venv first, e.g. pip install torch==2.13.0 --index-url
# https://download.pytorch.org/whl/cu128):
#
#   bash bench/gpu_check.sh [OUT_DIR]
#
# 1. nvidia-smi and torch.cuda: a CUDA build of torch, a visible GPU, bf16 support, one bf16 matmul on it;
# 2. the smoke pipeline as .ci/run runs it (`dvc exp run -S profile=smoke` in a scratch copy of this checkout, with
#    its own MLflow store), here on CUDA and in bf16 where params.yaml has `launch.mixed_precision` (the guard in
#    smoke() below), then scripts/check_smoke_metrics.py against .ci/smoke_reference.json: its tolerances were set
#    for other CPUs, so a GPU value outside them is reported for a reader to judge;
# 3. python -m pytest -q tests/test_distributed.py: the stages under `accelerate launch` in two processes;
# 4. bench/paper_size.py --device cuda --dtype bf16 at the papers' batches: step times, FLOPs, achieved FLOP/s,
#    memory, and the projections recomputed (written to OUT_DIR, not over the committed CPU report);
# then a summary of every step. Logs go to OUT_DIR (default: a new temporary folder). Exit status 0 when every
# step passed, 1 when one failed, 2 when there is no usable GPU (nothing else is run then).
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
out=${1:-$(mktemp -d -t gpu_check.XXXXXX)}
mkdir -p "$out" && out=$(cd "$out" && pwd) || exit 1
# shellcheck disable=SC1091
. .venv/bin/activate

steps=()
declare -A result
step() { # step NAME COMMAND...: run it, log to OUT_DIR/NAME.log, record ok/FAILED and the seconds it took
  local name=$1 start rc
  shift
  steps+=("$name")
  echo "== $name: $*"
  start=$(date +%s)
  "$@" >"$out/$name.log" 2>&1
  rc=$?
  if ((rc == 0)); then
    result[$name]="ok  $(($(date +%s) - start)) s"
  else
    result[$name]="FAILED (exit $rc) $(($(date +%s) - start)) s, see $out/$name.log"
    tail -n 20 "$out/$name.log"
  fi
  return "$rc"
}

summary() {
  echo
  echo "== summary (logs in $out)"
  for name in "${steps[@]}"; do
    printf '  %-16s %s\n' "$name" "${result[$name]}"
  done
  if [[ -f $out/paper_size.json ]]; then
    python - "$out/paper_size.json" <<'EOF'
import json, sys
report = json.load(open(sys.argv[1]))
print(f"  paper_size on {report['machine']['device']} ({report['machine']['dtype']}), {report['runtime_s']:.0f} s:")
for name, model in report["models"].items():
    for step, r in [("sampling", model["sampling"]), *model["steps"].items()]:
        print(f"    {name:<7} {step:<22} batch {r['batch']:>4} {r['seconds'] * 1000:9.1f} ms "
              f"{r['achieved_gflops_per_s'] / 1000:8.1f} TFLOP/s {r.get('cuda_max_allocated_mib', 0):8.0f} MiB")
for e in report["projections"]["experiments"]:
    print(f"    {e['name']:<20} 1 GPU {e['one_h100_s'] / 60:8.1f} min, 8 GPUs {e['eight_h100_s'] / 60:8.1f} min")
EOF
  fi
}

# The smoke pipeline on CUDA in a scratch copy, as .ci/run does it. A subshell: its cd and MLflow store stay in it.
# shellcheck disable=SC2329  # invoked through step
smoke() (
  set_args=(-S profile=smoke)
  work=$(mktemp -d -t gpu_smoke.XXXXXX) || exit 1
  echo "scratch copy: $work"
  tar -c --exclude=./.venv --exclude=./.git --exclude=./.dvc/cache --exclude=./.dvc/tmp --exclude=./mlflow.db \
    --exclude=./mlruns . | tar -x -C "$work" || exit 1
  cd "$work" || exit 1
  rm -f reports/metrics/*.json reports/winrate/*.json reports/prefs_stats.json
  git init -q && git add -A && git -c user.name=gpu-check -c user.email=gpu-check@localhost commit -qm "gpu check" ||
    exit 1
  export MLFLOW_TRACKING_URI="sqlite:///$work/mlflow.db"
  # `launch.mixed_precision` is new (another engineer is adding the launch section to params.yaml and config.py): pass
  # it only when check-params prints a `launch:` section holding it. Without it the run stays in fp32 (still on CUDA,
  # where accelerate puts every stage when a GPU is visible) and this log says so.
  params=$(motionpref check-params) || exit 1
  if sed -n '/^launch:/,/^[^ ]/p' <<<"$params" | grep -q '^  mixed_precision:'; then
    set_args+=(-S launch.mixed_precision=bf16)
  else
    echo "no launch.mixed_precision in params.yaml: the smoke run stays in fp32"
  fi
  echo "dvc exp run ${set_args[*]} dvc.yaml replicates/dvc.yaml"
  dvc exp run "${set_args[@]}" dvc.yaml replicates/dvc.yaml || exit 1
  python scripts/check_smoke_metrics.py --run .
)

# 1. the GPU and torch's view of it
step nvidia_smi nvidia-smi
step torch_cuda python - <<'EOF'
import torch
print("torch", torch.__version__, "CUDA build", torch.version.cuda)
if torch.version.cuda is None:
    raise SystemExit("this torch is a CPU build: install the same version's CUDA wheel into .venv")
if not torch.cuda.is_available():
    raise SystemExit("torch.cuda.is_available() is False: no visible GPU (driver, CUDA_VISIBLE_DEVICES)")
print("devices", [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())])
print("bf16 supported", torch.cuda.is_bf16_supported())
a = torch.randn(4096, 4096, device="cuda", dtype=torch.bfloat16)
print("bf16 matmul ok, checksum", float((a @ a).float().abs().mean()))
EOF
if [[ ${result[torch_cuda]} != ok* ]]; then
  summary
  exit 2
fi

# 2. the smoke pipeline
step smoke_pipeline smoke

# 3. the two-process test
if [[ -f tests/test_distributed.py ]]; then
  step test_distributed python -m pytest -q tests/test_distributed.py
else
  steps+=(test_distributed)
  result[test_distributed]="FAILED: tests/test_distributed.py does not exist yet"
fi

# 4. the paper-size models at the papers' batches
step paper_size python bench/paper_size.py --device cuda --dtype bf16 --repeats 10 --sample-repeats 5 \
  --policy-batch 64 --policy-sample-batch 64 --vqvae-batch 256 --mdm-batch 64 --mld-latent-batch 128 \
  --sopo-batch 64 --diffusion-sample-batch 64 --out "$out/paper_size.json" --readme "$out/paper_size_readme.md"

summary
for name in "${steps[@]}"; do
  [[ ${result[$name]} == ok* ]] || exit 1
done
exit 0
