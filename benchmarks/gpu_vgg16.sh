#!/usr/bin/env bash
# Issue 21, GPU part: train and evaluate the full-width VGG-16 pair with the ImageNet-style head
# (dense vs separable FC head) on Fashion-MNIST padded to 32x32, on one GPU:
# `sstorch sweep configs/gpu-vgg16-fmnist/ --workers 2` (both models share the GPU), then the
# results (CSVs, run records, figures, docs table, the configs, each run's eval.json / eval.md /
# metrics.csv / summary.json; no checkpoints) packed into OUT_DIR/gpu_vgg16.tar.gz.
#
#   bash benchmarks/gpu_vgg16.sh [OUT_DIR]        # the experiment, as the configs say
#   MODE=smoke bash benchmarks/gpu_vgg16.sh OUT   # tiny copy (width 1/16, 512 images): CPU check
#
# Expected cost on one H200 (measured 2026-12-04, docs/results-gpu-vgg16.md): 8-13 s per epoch
# per model with both sharing the GPU, about 3 minutes for both evaluations, so about 6 minutes
# for the 10 epochs the configs set. LIMIT (seconds, default 540) bounds the sweep; what finished
# by then is packed anyway, and a rerun on the same machine resumes.
#
# Fashion-MNIST is read from its usual places (sstorch.data); where none has it and the four
# .gz files lie in .data/fashion-mnist/ (a git-ignored folder, carried to a machine without the
# Debian package), they are copied into sstorch's cache first.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT_DIR=${1:-${OUT:-runs/gpu-vgg16-out}}
MODE=${MODE:-full}
LIMIT=${LIMIT:-540}
PY=${PYTHON:-python3}
CFG=configs/gpu-vgg16-fmnist
START=$(date +%s)
mkdir -p "$OUT_DIR"
exec > >(tee -a "$OUT_DIR/gpu_vgg16.log") 2>&1
echo "== gpu_vgg16.sh mode=$MODE limit=${LIMIT}s $(date -u +%FT%TZ)" \
     "commit $(git rev-parse --short HEAD 2>/dev/null || echo '?')"

if ! "$PY" -c "import sstorch" 2>/dev/null; then export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"; fi
"$PY" - <<'PYEOF' || exit 1
import importlib.util, sys
missing = [m for m in ("torch", "torchvision", "timm", "safetensors", "yaml", "tqdm", "scipy",
                       "sklearn", "matplotlib") if importlib.util.find_spec(m) is None]
if missing:
    sys.exit(f"gpu_vgg16.sh: missing Python packages {missing}; pip install -e . first")
import torch
print("torch", torch.__version__, "cuda", torch.cuda.is_available(),
      torch.cuda.get_device_name(0) if torch.cuda.is_available() else "(no GPU: CPU run)")
PYEOF
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv

cache="$HOME/.cache/sstorch/fashion-mnist"
if [ ! -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ] \
   && [ ! -f "$cache/train-images-idx3-ubyte.gz" ] && [ -d .data/fashion-mnist ]; then
  mkdir -p "$cache" && cp .data/fashion-mnist/*.gz "$cache/" && echo "data: .data/fashion-mnist -> $cache"
fi
# TF32 for the fp32 matmuls of evaluation (convolutions already use it by default on CUDA).
export TORCH_ALLOW_TF32_CUBLAS_OVERRIDE=1 PYTHONUNBUFFERED=1

# scratch_copy SRC DST KIND: the sweep's configs patched to write under DST, never to results/.
scratch_copy() {
  rm -rf "$2"; mkdir -p "$2/cfg"
  "$PY" - "$1" "$2" "$3" <<'PYEOF'
import sys
from pathlib import Path
import yaml
src, scr, kind = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
patch = {"smoke": {"epochs": 1, "data": {"train_subset": 512, "val_size": 256},
                   "model": {"width": 0.0625, "fc_hidden": 64}}}[kind]
def merge(a, b):
    for k, v in b.items():
        a[k] = merge(a.get(k) or {}, v) if isinstance(v, dict) else v
    return a
for f in src.glob("*.yaml"):
    tree = yaml.safe_load(f.read_text())
    if f.name == "sweep.yaml":
        tree.update(out_dir=f"{scr}/runs", csv=f"{scr}/results.csv",
                    details_csv=f"{scr}/details.csv", training_csv=f"{scr}/training.csv",
                    records=f"{scr}/records", figures=f"{scr}/figures", markdown=None)
        tree["eval"]["n"] = 64
    else:
        tree = merge(tree, patch)
        tree["out_dir"] = f"{scr}/runs"
    (scr / "cfg" / f.name).write_text(yaml.safe_dump(tree, sort_keys=False))
PYEOF
}

sweep() {  # sweep CFG LIMIT
  local t0=$(date +%s)
  timeout --signal=TERM "$2" "$PY" -m sstorch sweep "$1" --workers 2
  local rc=$?
  echo "== sweep $1: exit $rc after $(( $(date +%s) - t0 )) s"
  "$PY" -m sstorch sweep "$1" --list
  return $rc
}

if [ "$MODE" = smoke ]; then
  scratch_copy "$CFG" "$OUT_DIR/smoke" smoke || exit 1
  sweep "$OUT_DIR/smoke/cfg" "$LIMIT"; rc=$?
  items=("$OUT_DIR/smoke")
else
  sweep "$CFG" "$LIMIT"; rc=$?
  items=(results/gpu_vgg16_fmnist*.csv results/gpu_vgg16_fmnist_runs docs/figures/gpu-vgg16-fmnist
         docs/results-gpu-vgg16.md runs/gpu-vgg16-fmnist "$CFG")
fi
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.used --format=csv
existing=(); for i in "${items[@]}"; do [ -e "$i" ] && existing+=("$i"); done
tar --exclude='*.safetensors' --exclude='tb' -czf "$OUT_DIR/gpu_vgg16.tar.gz" "${existing[@]}" \
  && echo "packed ${existing[*]} -> $OUT_DIR/gpu_vgg16.tar.gz ($(( $(date +%s) - START )) s in all)"
exit $rc
