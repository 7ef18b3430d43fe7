#!/usr/bin/env bash
# Train the frame model v2 on a fresh GPU machine (PyTorch present, no package index), resumably.
#
#   scripts/train_gpu.sh OUT MINUTES [RESUME]
#
# OUT      directory for what comes back: the run packed as run.tar.part-* (weights, optimizer
#          state, log), log.csv, config.json and model.safetensors of the newest checkpoint,
#          and train.log; every file under 16 MiB.
# MINUTES  wall-clock minutes of training in this call (at most 9 on a lent machine); the run
#          stops at a log row with a checkpoint.
# RESUME   optional: the OUT of an earlier call (its run.tar.part-*); training continues there.
#
# Everything else comes from the environment (defaults in brackets): DATA [data_gpu]: where the
# recordings are made (each training id in parallel on the machine's cores, skipped when
# already complete), EPISODES [64] and STEPS [128] per id, RUN [runs/v2-gpu], BATCH [128],
# DEVICE [cuda], PRECISION [bf16], MODEL: the --model-overrides of the v2 network.
#
# Missing Python packages come as wheels in .whl (scripts/gpu_wheels.sh fetches them where pip
# works), EGL for MiniWorld's headless rendering as Debian packages in .gl; both are installed
# here first when present. Test on a CPU first:
#   DEVICE=cpu PRECISION=fp32 EPISODES=2 STEPS=16 BATCH=4 scripts/train_gpu.sh /tmp/out 0.2
set -euo pipefail
OUT=${1:?usage: scripts/train_gpu.sh OUT MINUTES [RESUME]}
MINUTES=${2:?usage: scripts/train_gpu.sh OUT MINUTES [RESUME]}
RESUME=${3:-}
DATA=${DATA:-data_gpu}
EPISODES=${EPISODES:-64}
STEPS=${STEPS:-128}
RUN=${RUN:-runs/v2-gpu}
BATCH=${BATCH:-128}
DEVICE=${DEVICE:-cuda}
PRECISION=${PRECISION:-bf16}
MODEL=${MODEL:-"dim=128 depth=4 heads=4 warp_input=true depth_input=true predict_depth=true residual=true warp_start=true context_noise=0.1"}
PY=${PY:-python3}
cd "$(dirname "$0")/.."
mkdir -p "$OUT"
exec > >(tee -a "$OUT/train.log") 2>&1
echo "train_gpu: $(date -u +%FT%TZ) out=$OUT minutes=$MINUTES resume=${RESUME:-none} device=$DEVICE"

if compgen -G ".gl/*.deb" >/dev/null; then
  for f in .gl/*.deb; do dpkg -x "$f" /; done
  ldconfig
fi
if compgen -G ".whl/*.whl" >/dev/null; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site:${PYTHONPATH:-}
fi
export PYTHONPATH=$PWD:${PYTHONPATH:-}
$PY -c "import gymnasium, transforms3d, safetensors, skimage, torch, rtfm_env.scenes" || {
  echo "train_gpu: a Python package is missing; fetch wheels with scripts/gpu_wheels.sh and carry .whl" >&2; exit 2; }

# -- data: one recording per training id, in parallel; a complete one is skipped (resumable)
CORES=$(nproc)
IDS=$($PY -c "from rtfm_env.scenes import TRAIN_IDS; print(' '.join(TRAIN_IDS))")
HELD=$($PY -c "from rtfm_env.scenes import HELDOUT_IDS; print(' '.join(HELDOUT_IDS))")
record() {  # split id
  OMP_NUM_THREADS=1 $PY -m rtfm_env.cli record --split "$1" --envs "$2" --episodes "$3" --steps "$STEPS" \
    --out "$DATA/$1/${2#MiniWorld-}" --no-progress
}
export -f record; export PY STEPS DATA
t0=$(date +%s)
printf '%s\n' $IDS | xargs -P "$CORES" -I{} bash -c "record train {} $EPISODES"
printf '%s\n' $HELD | xargs -P "$CORES" -I{} bash -c "record heldout {} 4"
echo "train_gpu: data ready in $(( $(date +%s) - t0 )) s"
TRAIN_DIRS=$(ls -d "$DATA"/train/*/)
HELD_DIRS=$(ls -d "$DATA"/heldout/*/ | head -n 1)

# -- resume: unpack an earlier call's run
if [ -n "$RESUME" ] && compgen -G "$RESUME/run.tar.part-*" >/dev/null && [ ! -e "$RUN/last" ]; then
  mkdir -p "$RUN"
  cat "$RESUME"/run.tar.part-* | tar -x -C "$RUN"
  echo "train_gpu: resuming from $(readlink "$RUN/last")"
fi

# -- train
GPUS=1
if [ "$DEVICE" = cuda ]; then GPUS=$($PY -c "import torch; print(max(1, torch.cuda.device_count()))"); fi
# shellcheck disable=SC2086  # word splitting of the id and override lists is intended
$PY -m torch.distributed.run --standalone --nproc-per-node "$GPUS" -m rtfm_env.cli train \
  --data $TRAIN_DIRS --heldout $HELD_DIRS --size S --model-overrides $MODEL \
  --precision "$PRECISION" --device "$DEVICE" --batch-size "$BATCH" --steps 1000000 --schedule constant \
  --lr 3e-4 --warmup-steps 200 --log-every 50 --eval-every 1000 --eval-samples 256 --ckpt-every 1000 \
  --num-workers 4 --minutes "$MINUTES" --out "$RUN" --no-progress

# -- what comes back: the newest checkpoint alone (a pruned run) packed in parts under 16 MiB
LAST=$(readlink "$RUN/last")
tar -C "$RUN" -c last "$LAST" log.csv | split -b 15M -d - "$OUT/run.tar.part-"
cp "$RUN/log.csv" "$OUT/"
cp "$RUN/$LAST/config.json" "$RUN/$LAST/model.safetensors" "$OUT/"
echo "train_gpu: $(date -u +%FT%TZ) done at $LAST; $(ls "$OUT" | tr '\n' ' ')"
