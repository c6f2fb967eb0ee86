#!/usr/bin/env bash
# Re-make every committed benchmark result (about an hour on the project's 2-core machine).
# Needs ../shared/data (the Geant4 files) and the test extra (scikit-hep-testdata).
set -euo pipefail
cd "$(dirname "$0")/.."
for suite in dimuon calo_pbwo4 calo_wsi; do
  python -m physgen.cli bench "benchmarks/suites/$suite.toml" --out "runs/$suite"
  cp "runs/$suite/results.json" "benchmarks/results/$suite.json"
  cp "runs/$suite/report.md" "benchmarks/results/$suite.md"
done
python benchmarks/metrics_speed.py --jetnet-python "${JETNET_PYTHON:-}" 2>/dev/null || python benchmarks/metrics_speed.py
