#!/usr/bin/env bash
# Re-make the committed benchmark results (about six hours on a 2-core CPU machine).
# Needs ../shared/data (the Geant4 files) and the test extra (scikit-hep-testdata).
# JETNET_PYTHON: a Python where jetnet imports (jetnet 0.2.5 needs NumPy < 2), for the FPD/KPD comparison.
# calo_wsi_gpu.json comes from benchmarks/gpu_wsi.sh on a GPU machine.
# diffusion_steps.json (docs/notes/sampling-speed.md) and generation_speed_pbwo4_flow_small.json (docs/results.md)
# were made by benchmarks/diffusion_steps.py and suites/calo_pbwo4_flow_small.toml of commit 095e3b9
# (git show 095e3b9:benchmarks/diffusion_steps.py); a re-run of calo_pbwo4 below times the same 128-wide flow.
set -euo pipefail
cd "$(dirname "$0")/.."
export PHYSGEN_DATA="${PHYSGEN_DATA:-../shared/data}"
for suite in dimuon calo_pbwo4 calo_wsi spins; do
  python -m physgen.cli bench "benchmarks/suites/$suite.toml" --out "runs/$suite"
  cp "runs/$suite/results.json" "benchmarks/results/$suite.json"
  cp "runs/$suite/report.md" "benchmarks/results/$suite.md"
done
# the W/Si models judged on the 10,000 showers the suite never uses, also under the CaloChallenge
# evaluator's protocol (its classifier 512 wide on a CPU; about 10 minutes a model)
python benchmarks/heldout_eval.py benchmarks/suites/calo_wsi.toml runs/calo_wsi --events 8000:18000 \
  --calochallenge 2 --cls-hidden 512 --out calo_wsi_heldout
# operations per training step (CPU), and the GPU time per operation of the GPU run
python benchmarks/step_ops.py benchmarks/suites/calo_wsi_gpu.toml --gpu-result calo_wsi_gpu --out step_ops_wsi
# the same, eager and with compile = true (docs/notes/compiled-training.md)
python benchmarks/step_ops.py benchmarks/suites/calo_wsi_gpu.toml --modes eager,compile --out step_ops_wsi_compile
# re-time the saved models on their own (the suites time them right after training)
python benchmarks/generation_speed.py benchmarks/suites/calo_pbwo4.toml runs/calo_pbwo4 --out generation_speed_pbwo4
python benchmarks/generation_speed.py benchmarks/suites/calo_wsi.toml runs/calo_wsi --out generation_speed_wsi
python benchmarks/quantum.py
if [ -n "${JETNET_PYTHON:-}" ]; then
  python benchmarks/metrics_speed.py --jetnet-python "$JETNET_PYTHON"
else
  python benchmarks/metrics_speed.py
fi
python benchmarks/results_page.py
