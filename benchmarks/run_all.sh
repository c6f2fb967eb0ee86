#!/usr/bin/env bash
# Re-make every committed benchmark result (about three hours on the project's 2-core machine).
# Needs ../shared/data (the Geant4 files) and the test extra (scikit-hep-testdata).
# JETNET_PYTHON: a Python where jetnet imports (jetnet 0.2.5 needs NumPy < 2), for the FPD/KPD comparison.
set -euo pipefail
cd "$(dirname "$0")/.."
for suite in dimuon calo_pbwo4 calo_pbwo4_30min calo_pbwo4_flow_spline calo_pbwo4_flow_small calo_wsi calo_wsi_diffusion_hit_bits calo_wsi_flow_small calo_wsi_wgan_energy calo_wsi_wgan_long calo_pbwo4_wgan_long calo_pbwo4_vae_long spins; do
  python -m physgen.cli bench "benchmarks/suites/$suite.toml" --out "runs/$suite"
  cp "runs/$suite/results.json" "benchmarks/results/$suite.json"
  cp "runs/$suite/report.md" "benchmarks/results/$suite.md"
done
# the W/Si models judged on the 10,000 showers the suite never uses (calo_wsi_heldout.json is the same for the
# merged run of sessions 12-18, before the value map)
python benchmarks/heldout_eval.py benchmarks/suites/calo_wsi.toml runs/calo_wsi --events 8000:18000 --out calo_wsi_heldout_session22
python benchmarks/heldout_eval.py benchmarks/suites/calo_wsi_diffusion_hit_bits.toml runs/calo_wsi_diffusion_hit_bits --events 8000:18000 \
  --out calo_wsi_diffusion_hit_bits_heldout
python benchmarks/heldout_eval.py benchmarks/suites/calo_wsi_flow_small.toml runs/calo_wsi_flow_small --events 8000:18000 \
  --out calo_wsi_flow_small_heldout
python benchmarks/heldout_eval.py benchmarks/suites/calo_wsi_wgan_energy.toml runs/calo_wsi_wgan_energy --events 8000:18000 \
  --out calo_wsi_wgan_energy_heldout
python benchmarks/heldout_eval.py benchmarks/suites/calo_wsi_wgan_long.toml runs/calo_wsi_wgan_long --events 8000:18000 \
  --out calo_wsi_wgan_long_heldout
# session 16's hit calibration, re-fitted on saved models (the same weights): per ring and per voxel, and the
# session-15 hit-bits diffusion with it (docs/surrogates.md, "Hit calibration")
python benchmarks/recalibrate.py benchmarks/suites/calo_wsi.toml runs/calo_wsi --labels vae,wgan --hit-calibration on --out runs/calo_wsi_hitcal
python benchmarks/heldout_eval.py benchmarks/suites/calo_wsi.toml runs/calo_wsi_hitcal --events 8000:18000 --out calo_wsi_hit_calibration_heldout
python benchmarks/heldout_eval.py benchmarks/suites/calo_wsi.toml runs/calo_wsi_hitcal --events test --out calo_wsi_hit_calibration_test
python benchmarks/recalibrate.py benchmarks/suites/calo_pbwo4.toml runs/calo_pbwo4 --labels vae,wgan --hit-calibration on --out runs/calo_pbwo4_hitcal
python benchmarks/heldout_eval.py benchmarks/suites/calo_pbwo4.toml runs/calo_pbwo4_hitcal --events test --out calo_pbwo4_hit_calibration_test
python benchmarks/recalibrate.py benchmarks/suites/calo_pbwo4_wgan_long.toml runs/calo_pbwo4_wgan_long --labels wgan_15min_aug8 \
  --hit-calibration on --out runs/calo_pbwo4_wgan_long_hitcal
python benchmarks/heldout_eval.py benchmarks/suites/calo_pbwo4_wgan_long.toml runs/calo_pbwo4_wgan_long runs/calo_pbwo4_wgan_long_hitcal \
  --events test --out calo_pbwo4_wgan_long_hit_calibration_test
python benchmarks/recalibrate.py benchmarks/suites/calo_wsi.toml runs/calo_wsi --labels wgan --hit-calibration on --hit-pool voxel \
  --out runs/calo_wsi_hit_voxel
python benchmarks/heldout_eval.py benchmarks/suites/calo_wsi.toml runs/calo_wsi_hit_voxel --events 8000:18000 \
  --out calo_wsi_wgan_hit_calibration_per_voxel_heldout
python benchmarks/recalibrate.py benchmarks/suites/calo_wsi_diffusion_hit_bits.toml runs/calo_wsi_diffusion_hit_bits --labels hit_bits \
  --hit-calibration on --out runs/calo_wsi_hit_bits_recalibrated
python benchmarks/heldout_eval.py benchmarks/suites/calo_wsi_diffusion_hit_bits.toml runs/calo_wsi_hit_bits_recalibrated \
  --events 8000:18000 --out calo_wsi_diffusion_hit_bits_recalibrated_heldout
# session 19's hit-value map (docs/surrogates.md, "Hit values"): the suites train with it; the same models
# re-calibrated without it, and both judged (the choice on showers 6,000-8,000, then held out and test split)
python benchmarks/recalibrate.py benchmarks/suites/calo_wsi.toml runs/calo_wsi --labels flow,diffusion,vae,wgan --value-calibration off \
  --out runs/calo_wsi_novalues
python benchmarks/heldout_eval.py benchmarks/suites/calo_wsi.toml runs/calo_wsi_novalues --events 6000:8000 --out calo_wsi_value_calibration_select_off
python benchmarks/heldout_eval.py benchmarks/suites/calo_wsi.toml runs/calo_wsi --events 6000:8000 --out calo_wsi_value_calibration_select_on
python benchmarks/heldout_eval.py benchmarks/suites/calo_wsi.toml runs/calo_wsi --events 8000:18000 --out calo_wsi_value_calibration_heldout
python benchmarks/heldout_eval.py benchmarks/suites/calo_wsi.toml runs/calo_wsi --events test --out calo_wsi_value_calibration_test_on
python benchmarks/heldout_eval.py benchmarks/suites/calo_wsi.toml runs/calo_wsi_novalues --events test --out calo_wsi_value_calibration_test_off
python benchmarks/recalibrate.py benchmarks/suites/calo_pbwo4.toml runs/calo_pbwo4 --labels flow,diffusion,vae,wgan --value-calibration off \
  --out runs/calo_pbwo4_novalues
python benchmarks/heldout_eval.py benchmarks/suites/calo_pbwo4.toml runs/calo_pbwo4_novalues --events test --out calo_pbwo4_value_calibration_off
python benchmarks/heldout_eval.py benchmarks/suites/calo_pbwo4.toml runs/calo_pbwo4 --events test --out calo_pbwo4_value_calibration_on
# session 20 (docs/surrogates.md, "With the value map" and "A ring short of hits"): the flow's temperature re-scanned
# with the map (calo_wsi samples at the pick, 1.3), and the cuts without their floor at the global threshold (tried, not
# on in any suite). calo_wsi_value_pool_{select,heldout} and calo_wsi_flow_temperature_heldout recorded the pooled maps
# and T = 1.3 on session 19's models; in a re-run the value_calibration_* results above already include both.
python benchmarks/temperature_scan.py benchmarks/suites/calo_wsi.toml runs/calo_wsi --label flow \
  --temperatures 0.85,1.0,1.15,1.3,1.5,1.7,2.0 --events 6000:8000 --out calo_wsi_flow_temperature_select
python benchmarks/recalibrate.py benchmarks/suites/calo_wsi.toml runs/calo_wsi --labels flow,diffusion,vae,wgan --readout-floor off \
  --out runs/calo_wsi_unfloored
python benchmarks/heldout_eval.py benchmarks/suites/calo_wsi.toml runs/calo_wsi_unfloored --events 6000:8000 --out calo_wsi_readout_unfloored_select
python benchmarks/heldout_eval.py benchmarks/suites/calo_wsi.toml runs/calo_wsi_unfloored --events 8000:18000 --out calo_wsi_readout_unfloored_heldout
python benchmarks/recalibrate.py benchmarks/suites/calo_pbwo4.toml runs/calo_pbwo4 --labels flow --readout-floor off --out runs/calo_pbwo4_unfloored
python benchmarks/heldout_eval.py benchmarks/suites/calo_pbwo4.toml runs/calo_pbwo4_unfloored --events test --out calo_pbwo4_readout_unfloored_test
# session 22 (docs/surrogates.md, "layer 44's hit counts"): how the W/Si models share layer 44's hits among showers,
# and a per-layer hit-count map tried as a probe on showers 6,000-8,000 (not in physgen)
python benchmarks/layer_counts.py benchmarks/suites/calo_wsi.toml runs/calo_wsi --labels flow,diffusion,vae,wgan \
  --events 8000:18000 --out layer_counts_wsi_heldout
python benchmarks/layer_counts.py benchmarks/suites/calo_wsi.toml runs/calo_wsi --labels vae,wgan --events 6000:8000 \
  --count-map --out layer_counts_wsi_select
# operations per training step (CPU), and the GPU time per operation of the GPU run (calo_wsi_gpu.json, made with
# benchmarks/gpu_wsi.sh where a GPU is lent)
python benchmarks/step_ops.py benchmarks/suites/calo_wsi_gpu.toml --gpu-result calo_wsi_gpu --out step_ops_wsi
# re-time the saved models on their own (the suites time them right after training)
python benchmarks/generation_speed.py benchmarks/suites/calo_pbwo4.toml runs/calo_pbwo4 --out generation_speed_pbwo4
python benchmarks/generation_speed.py benchmarks/suites/calo_pbwo4_flow_small.toml runs/calo_pbwo4_flow_small --out generation_speed_pbwo4_flow_small
python benchmarks/generation_speed.py benchmarks/suites/calo_pbwo4_30min.toml runs/calo_pbwo4_30min --out generation_speed_pbwo4_30min
python benchmarks/generation_speed.py benchmarks/suites/calo_wsi.toml runs/calo_wsi --out generation_speed_wsi
python benchmarks/quantum.py
if [ -n "${JETNET_PYTHON:-}" ]; then
  python benchmarks/metrics_speed.py --jetnet-python "$JETNET_PYTHON"
else
  python benchmarks/metrics_speed.py
fi
