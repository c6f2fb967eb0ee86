#!/usr/bin/env bash
# The W/Si suite on a GPU, in one short call: the CUDA tests first (tests/test_gpu.py; stop if
# they fail), then each family of calo_wsi_gpu.toml in its own `physgen bench --only` run, so
# every family's result is kept as soon as it is made even if the call is cut short.
#   bash benchmarks/gpu_wsi.sh OUTDIR [SUITE]
# writes OUTDIR/gpu.txt (nvidia-smi), OUTDIR/FAMILY.json (each run's results.json). Merge them:
#   cp OUTDIR/gaussian.json benchmarks/results/calo_wsi_gpu.json
#   for f in wgan vae diffusion flow; do
#     python benchmarks/merge_results.py calo_wsi_gpu OUTDIR/$f.json --labels $f; done
# PHYSGEN_GPU_TESTS=0 skips the tests (a dry run of the script on a CPU, with a short suite).
set -u
out=${1:?usage: bash benchmarks/gpu_wsi.sh OUTDIR [SUITE]}
suite=${2:-benchmarks/suites/calo_wsi_gpu.toml}
py=${PYTHON:-python3}
mkdir -p "$out"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv >"$out/gpu.txt" 2>&1 || echo "no nvidia-smi" >"$out/gpu.txt"
"$py" -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available() and torch.cuda.get_device_name(0))"
if [ "${PHYSGEN_GPU_TESTS:-1}" != 0 ]; then
    # warnings shown, not raised: the machine's torch/numpy are not the pinned ones
    timeout 300 "$py" -m pytest -q -p no:cacheprovider -o filterwarnings=default tests/test_gpu.py || exit 1
fi
for family in gaussian wgan vae diffusion flow; do
    start=$(date +%s)
    "$py" -m physgen.cli bench "$suite" --only "$family" --out "/tmp/gpu_wsi_$family" >"/tmp/gpu_wsi_$family.log" 2>&1
    rc=$?
    grep -E "FAILED|Traceback|Error" "/tmp/gpu_wsi_$family.log" | head -n 5
    tail -n 12 "/tmp/gpu_wsi_$family.log"
    echo "== $family: rc $rc in $(($(date +%s) - start)) s"
    [ "$rc" = 0 ] && cp "/tmp/gpu_wsi_$family/results.json" "$out/$family.json"
done
exit 0
