#!/usr/bin/env bash
# The GPU check of docs/distributed.md: for each network, a few hundred DistributedDataParallel training steps in
# the `gpu` profile (width 1.0, 224 px, bf16, channels-last) under torchrun --nproc_per_node=1 (NCCL on CUDA),
# global images/s, then one sharded evaluation. One BENCH_DDP {json} line per network; about 3 minutes per
# network on one H200 (8 minutes in all, with a limit of 4 minutes per network). On CUDA it then runs
# `bench imagenet` (docs/imagenet.md: the streaming ImageNet pass, fp32 with TF32 off, 64 and 512 fake images).
#
#   scripts/gpu_check.sh                          # on a GPU machine: NCCL, 300 steps of each network
#   scripts/gpu_check.sh --device cpu --profile smoke --steps 2   # the same path on a CPU (gloo): the test
#
# Options: --device cuda|cpu, --profile NAME, --steps N, --nproc N (processes per machine). PY= picks the Python
# (default .venv/bin/python when it exists, else python3).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -z "${PY:-}" ]; then
  if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
fi
DEVICE=cuda PROFILE=gpu STEPS=300 NPROC=1 LIMIT=240
while [ $# -gt 0 ]; do
  case "$1" in
    --device) DEVICE=$2; shift 2 ;;
    --profile) PROFILE=$2; shift 2 ;;
    --steps) STEPS=$2; shift 2 ;;
    --nproc) NPROC=$2; shift 2 ;;
    *) echo "gpu_check.sh: unknown option $1 (use --device, --profile, --steps, --nproc)" >&2; exit 2 ;;
  esac
done
"$PY" - <<'PY'
import torch
gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
print(f"[gpu_check] torch {torch.__version__}, CUDA {torch.version.cuda}, {torch.cuda.device_count()} GPU(s): {gpu}; "
      f"TF32 in cuDNN convolutions: {torch.backends.cudnn.allow_tf32}", flush=True)
PY
for model in resnet50 bagnet33; do
  echo "[gpu_check] $model: $STEPS steps, profile $PROFILE, $NPROC process(es) on $DEVICE" >&2
  timeout "$LIMIT" "$PY" -m torch.distributed.run --standalone --nproc_per_node="$NPROC" \
    -m bagnet_lib.bench.ddp --model "$model" --profile "$PROFILE" --steps "$STEPS" --device "$DEVICE"
done
if [ "$DEVICE" = cuda ]; then
  echo "[gpu_check] bench imagenet on cuda" >&2
  timeout 300 "$PY" -m bagnet_lib bench imagenet --device cuda --json "${OUT:-.}/bench_imagenet_cuda.json"
fi
