#!/usr/bin/env bash
# GPU verification in one go (what ran on the lent H200 and H100): the CUDA tests with the
# core's training/model/optimiser/physics tests, the CUDA training benchmark, the physics
# timings with the tortuosity solver on the GPU, and the command line end to end on CUDA
# (benchmarks/gpu_cli_check.sh; CLI_RUN_DEST=DIR keeps its fp32 run folder). Needs only torch,
# numpy, scipy, tifffile, tqdm and pytest (no napari): run from the repository root,
#   bash benchmarks/gpu_check.sh [cuda_training.py options]
set -uo pipefail
export PYTHONPATH="$PWD/src:$PWD${PYTHONPATH:+:$PYTHONPATH}"
export PYTEST_DISABLE_PLUGIN_AUTOLOAD=1 PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
$PY -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.is_available())"
$PY -m pytest -q -p no:cacheprovider -rs tests/test_cuda.py tests/test_training.py \
    tests/test_folded_conv.py tests/test_model.py tests/test_adam.py tests/test_physics.py
tests=$?
$PY benchmarks/cuda_training.py "$@"
bench=$?
# the tortuosity solver on the GPU against scipy's on the CPU, one paper-sized window
$PY benchmarks/physics_speed.py --threads 2 --repeat 2 --torch-device cuda || bench=1
bash benchmarks/gpu_cli_check.sh "${CLI_RUN_DEST:-}"
cli=$?
echo "tests rc=$tests benchmark rc=$bench cli rc=$cli"
exit $(( tests || bench || cli ))
