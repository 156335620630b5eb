#!/usr/bin/env bash
# The issue's table on an NVIDIA GPU: AlexNet and InceptionV4, bs 1..256, fp32 and fp16, every
# stage (parity judges each precision) on generated images with seeded random weights.
#
#   bash scripts/gpu_sweep.sh [MODELS] [PRECISIONS] [EXTRA HYDRA OVERRIDES...]
#   bash scripts/gpu_sweep.sh                                  # alexnet,inceptionv4 x fp32,fp16
#   bash scripts/gpu_sweep.sh alexnet fp16 chip.compile=true   # one sweep, compiled
#
# One Hydra sweep (-m over bs) per model and precision, so each table holds one precision; all
# tables are appended to outputs/gpu-sweep/table.md (and copied to $OUT when it is set, as on the
# device machine). On a machine whose calls are limited to 10 minutes, run one model per call.
# Environment: RUNNER (default: scripts/gpu_setup.sh run, the machine's torch + carried wheels;
# .venv/bin/python -m runner where the lock's venv exists), CHIP (default cuda), FAST (the chip
# options of every job), GPU_SWEEP_BS, GPU_SWEEP_IMAGES.
set -euo pipefail
cd "$(dirname "$0")/.."

MODELS=${1:-alexnet,inceptionv4}
PRECISIONS=${2:-fp32,fp16}
shift $(($# < 2 ? $# : 2))
read -r -a RUNNER <<<"${RUNNER:-bash scripts/gpu_setup.sh run}"
CHIP=${CHIP:-cuda}
# channels_last and CUDA graphs in every job: what makes small batches fast on a GPU; fp32 keeps
# TF32 off, so it is a true fp32 figure
read -r -a FAST <<<"${FAST-chip.channels_last=true chip.cuda_graphs=true}"
BATCHES=${GPU_SWEEP_BS:-1,4,8,16,32,64,128,256}
IMAGES=${GPU_SWEEP_IMAGES:-512}  # two full batches at bs=256
OUTDIR=outputs/gpu-sweep
mkdir -p "$OUTDIR"
: >"$OUTDIR/table.md"  # this call's tables only (each sweep folder keeps its own)

status=0
for model in ${MODELS//,/ }; do
  for precision in ${PRECISIONS//,/ }; do
    dir=$OUTDIR/$model-$precision
    echo "gpu_sweep: $model $precision on chip=$CHIP, bs=$BATCHES -> $dir"
    "${RUNNER[@]}" -m "model=$model" "chip=$CHIP" "chip.precision=$precision" "${FAST[@]}" \
      "bs=$BATCHES" dataset=synthetic "dataset.synthetic.num_images=$IMAGES" \
      model.weights=random stage=all "hydra.sweep.dir=$dir" "$@" || status=1
    if [ -f "$dir/sweep/report.md" ]; then
      {
        echo "## $model, chip=$CHIP chip.precision=$precision ${FAST[*]} $*"
        echo
        cat "$dir/sweep/report.md"
        echo
      } >>"$OUTDIR/table.md"
      cp "$dir/sweep/table.csv" "$OUTDIR/table-$model-$precision.csv"
    fi
  done
done
if [ -n "${OUT:-}" ] && [ -f "$OUTDIR/table.md" ]; then
  cp "$OUTDIR"/table*.md "$OUTDIR"/table-*.csv "$OUT"/
fi
echo "gpu_sweep: tables in $OUTDIR/table.md"
exit $status
