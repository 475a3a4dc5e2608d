#!/usr/bin/env bash
# The command line as a user runs it on a GPU server: two synthetic 96x256x256 stacks, a
# paper-preset run (l = 24, crop 224, stride 1) trained on CUDA for EPOCHS epochs (default 30),
# in fp32 and then in bf16, each evaluated and the first validation window's latent features
# decoded there. The fp32 run folder is copied to DEST (when given), so that its checkpoint can
# be opened on a CPU-only machine afterwards (electrode-cae decode / the Train panel's Open run).
#   bash benchmarks/gpu_cli_check.sh [DEST] [EPOCHS]
set -euo pipefail
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
CAE="$PY -m napari_electrode_cae.cli"
dest=${1:-}
epochs=${2:-30}
device=${DEVICE:-cuda}  # DEVICE=cpu tries the script on a CPU
work=$(mktemp -d)
$CAE sample --shape 96 256 256 --seed 3 "$work/data"
for precision in ${PRECISIONS:-fp32 bf16}; do
  run="$work/run_$precision"
  TIMEFORMAT="train $precision: %R s wall"
  time $CAE train "$work/data/synthetic_CAL.tif" --out "$run" --preset paper \
      --epochs "$epochs" --device "$device" --precision "$precision" 2>&1 | tail -4
  $CAE evaluate "$run" | tail -3
  # the latent features of the first validation window, as a user would start from
  latent=$($PY -c "import csv,sys; r=next(r for r in csv.DictReader(open(sys.argv[1])) if r['split']=='val'); print(','.join(v for k,v in r.items() if k[1:].isdigit() and k[0]=='z'))" "$run/latents.csv")
  $CAE decode "$run" --latent="$latent" --out "$work/decoded_$precision.npy"
  $PY -c "import numpy as np,sys; a=np.load(sys.argv[1]); print('decoded', a.shape, a.dtype, np.bincount(a.ravel(), minlength=3))" "$work/decoded_$precision.npy"
done
if [ -n "$dest" ]; then mkdir -p "$dest" && cp "$work/run_fp32/"* "$dest/"; fi
