#!/usr/bin/env bash
# The paper's set-ups on one GPU, with CIFAR-shaped fake data, in at most 8 minutes on one H100:
#   1. metric-vector products (benchmarks/metric_products.py) on the MLP, VGG11 and VGG16
#      (batch 128 for the CNNs), against both forward+backward baselines and curvlinops if present;
#   2. relax: all nodes in one vmapped pass against a loop (benchmarks/relax_batched.py);
#   3. train two VGG16s and two ResNet-18s, then sparsify, connect and continual (split-CIFAR-10)
#      on each architecture, on fake CIFAR-10 written in torchvision's format
#      (weightgeo.data.testing via benchmarks/fake_cifar_cli.py).
# Every step prints its figures and its wall time; the runs land in $RUNS (default runs/gpu).
#
#   benchmarks/gpu.sh                          # SCALE=full DEVICE=cuda: the H100 run
#   SCALE=smoke DEVICE=cpu benchmarks/gpu.sh   # the same steps, tiny, on a CPU (a few minutes)
#
# On a lent GPU machine (see /work/.library/device/README.md): its python3 has torch, torchvision,
# click, numpy, scipy, pandas, matplotlib and scikit-learn, but not geoopt or mlxtend (nor
# curvlinops, the optional peer). Carry them as wheels. Once, here, in the repository's root:
#   echo /.whl/ >> .git/info/exclude
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux2014_x86_64 -d .whl geoopt==0.5.1 mlxtend==0.25.0 curvlinops-for-pytorch==3.0.1
# (all three are pure-Python wheels; add any Requires-Dist the image lacks, listed by
#  `unzip -p .whl/NAME-*.whl '*/METADATA' | grep ^Requires-Dist`). Then run with carry [".whl"] and
#   python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
#     --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site || exit; PY=python3 benchmarks/gpu.sh
# The script puts the repository on PYTHONPATH itself (weightgeo runs from the source tree).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
SCALE=${SCALE:-full}
DEVICE=${DEVICE:-cuda}
RUNS=${RUNS:-runs/gpu}
if [[ -z "${PY:-}" ]]; then
  if [[ -x .venv/bin/python ]]; then PY=.venv/bin/python; else PY=python3; fi
fi
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
case "$SCALE" in
  full)  # the H100 run: real CIFAR sizes
    TRAIN=50000 TEST=10000 MLP_BATCH=256 CNN_BATCH=128 REPEATS=20 THREADS=4 SOLVES=--solves
    NODES=16 RELAX_BATCH=128 RELAX_REPEATS=20 WIDTH=1.0 EPOCHS=2
    SPARSITY=0.9 SPARSIFY_BUDGET=500 CONNECT_BUDGET=1000 POINTS=61 RESNET_CONNECT_BUDGET=300
    TASKS=5 CONTINUAL_BUDGET=200 MAX_TRAIN=2000 BATCH_SIZE=64
    MEMORY=100 EVAL_IMAGES=1000 NODES_CONNECT=16 ;;
  smoke)  # every step, tiny: proves the script on a CPU
    TRAIN=512 TEST=256 MLP_BATCH=64 CNN_BATCH=2 REPEATS=1 THREADS=1 SOLVES=--no-solves
    NODES=4 RELAX_BATCH=32 RELAX_REPEATS=2 WIDTH=0.125 EPOCHS=1
    SPARSITY=0.5 SPARSIFY_BUDGET=10 CONNECT_BUDGET=8 POINTS=3 RESNET_CONNECT_BUDGET=8
    TASKS=2 CONTINUAL_BUDGET=16 MAX_TRAIN=64 BATCH_SIZE=16
    MEMORY=16 EVAL_IMAGES=64 NODES_CONNECT=2 ;;
  *) echo "SCALE must be full or smoke, got '$SCALE'" >&2; exit 2 ;;
esac
# The same methods at both scales, so that the smoke run proves every step the GPU run takes.
# connect's default set, less rebasin (weight matching is for MLPs: it refuses a Conv2d).
SPARSIFY_METHODS=geodesic,magnitude-finetune
CONNECT_METHODS=linear,traverse,relax,bezier,polychain
RESNET_CONNECT_METHODS=linear,relax,bezier
CONTINUAL_METHODS=geodesic,finetune,ewc

START=$SECONDS
FAILED=()
step() {  # step NAME COMMAND...: run it, print its wall time; a failed step is named, the rest still run
  local name=$1 began=$SECONDS
  shift
  echo
  echo "=== $name ($SCALE, $DEVICE)"
  if "$@"; then
    echo "--- $name: $((SECONDS - began)) s (total $((SECONDS - START)) s)"
  else
    echo "--- $name: FAILED (exit $?) after $((SECONDS - began)) s (total $((SECONDS - START)) s)"
    FAILED+=("$name")
  fi
}
cli() { "$PY" benchmarks/fake_cifar_cli.py "$@"; }

echo "gpu.sh: SCALE=$SCALE DEVICE=$DEVICE PY=$PY RUNS=$RUNS"
"$PY" - <<'EOF'
import os, platform, torch
gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no CUDA device"
print(f"torch {torch.__version__}, {gpu}, {platform.processor() or platform.machine()}, "
      f"{os.cpu_count()} CPU cores, load average {os.getloadavg()[0]:.2f}")
EOF
mkdir -p "$RUNS"
DATA="$RUNS/data"

# 1. products
for model in mlp vgg11 vgg16; do
  batch=$CNN_BATCH
  [[ $model == mlp ]] && batch=$MLP_BATCH
  step "products: $model, batch $batch" "$PY" benchmarks/metric_products.py --model "$model" \
    --device "$DEVICE" --batch "$batch" --repeats "$REPEATS" --threads "$THREADS" $SOLVES \
    --out "$RUNS/products_$model.json"
done

# 2. relax: vmap against the loop
step "relax: vmap vs loop" "$PY" benchmarks/relax_batched.py --nodes "$NODES" --batch "$RELAX_BATCH" \
  --repeats "$RELAX_REPEATS" --device "$DEVICE"

# 3. applications on fake CIFAR-10
step "fake CIFAR-10 ($TRAIN train, $TEST test)" cli write --root "$DATA" --dataset cifar10 \
  --train "$TRAIN" --test "$TEST"
common=(--device "$DEVICE" --data-root "$DATA" --overwrite)
for model in vgg16 resnet18; do
  for seed in 0 1; do
    step "train $model seed $seed ($EPOCHS epochs)" cli train --model "$model" --dataset cifar10 \
      --width "$WIDTH" --epochs "$EPOCHS" --seed "$seed" --out "$RUNS/train_${model}_$seed" "${common[@]}"
  done
  step "sparsify $model ($SPARSIFY_METHODS at $SPARSITY, budget $SPARSIFY_BUDGET)" cli sparsify \
    "$RUNS/train_${model}_0" --sparsity "$SPARSITY" --method "$SPARSIFY_METHODS" \
    --budget "$SPARSIFY_BUDGET" --out "$RUNS/sparsify_$model" "${common[@]}"
  methods=$CONNECT_METHODS budget=$CONNECT_BUDGET
  if [[ $model == resnet18 ]]; then methods=$RESNET_CONNECT_METHODS budget=$RESNET_CONNECT_BUDGET; fi
  step "connect $model ($methods, budget $budget)" cli connect "$RUNS/train_${model}_0" \
    "$RUNS/train_${model}_1" --method "$methods" --budget "$budget" --points "$POINTS" \
    --nodes "$NODES_CONNECT" --bn-images "$EVAL_IMAGES" --train-eval-images "$EVAL_IMAGES" \
    --out "$RUNS/connect_$model" "${common[@]}"
  step "continual $model (split-cifar10, $TASKS tasks, $CONTINUAL_METHODS)" cli continual \
    --tasks split-cifar10 --n-tasks "$TASKS" --model "$model" --method "$CONTINUAL_METHODS" \
    --budget "$CONTINUAL_BUDGET" --max-train "$MAX_TRAIN" --batch-size "$BATCH_SIZE" --memory "$MEMORY" \
    --out "$RUNS/continual_$model" "${common[@]}"
done
echo
if (( ${#FAILED[@]} )); then
  printf 'gpu.sh: %d step(s) failed in %d s:' "${#FAILED[@]}" "$((SECONDS - START))"
  printf ' [%s]' "${FAILED[@]}"
  echo
  exit 1
fi
echo "gpu.sh: all steps done in $((SECONDS - START)) s"
