#!/usr/bin/env bash
# Every check that needs a GPU, in one go (a lent GPU machine's time is short):
#   1. the whole test suite, where the `gpu`-marked tests now run and `accelerator: auto` picks the GPU;
#   2. the three configs, reporting the device used and the final validation accuracy;
#   3. the benchmark on CUDA (its table goes to docs/benchmarks.md).
# Usage: bash scripts/gpu_check.sh OUT_DIR [benchmark options, e.g. --repeats 2 --epochs 1]
set -uo pipefail
out=${1:?usage: gpu_check.sh OUT_DIR [benchmark options]}
shift
mkdir -p "$out"
status=0

python3 -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; print(torch.cuda.get_device_name(0), torch.__version__)" || exit 1

python3 -m pytest -q -p no:cacheprovider 2>&1 | tail -n 30 | tee "$out/pytest.log"
[ "${PIPESTATUS[0]}" -eq 0 ] || status=1

for config in full_batch per_example minibatch; do
    start=$SECONDS
    python3 -m logreg fit --config "configs/$config.yaml" --trainer.default_root_dir "$out/runs" \
        --trainer.enable_progress_bar false > "$out/fit_$config.log" 2>&1 || status=1
    echo "$config: $(grep -o 'GPU available: [A-Za-z]*, used: [A-Za-z]*' "$out/fit_$config.log") in $((SECONDS - start)) s"
done
python3 - "$out/runs" <<'PY' || status=1
import sys
from pathlib import Path

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

for run in sorted(Path(sys.argv[1]).glob("*/version_*")):
    events = EventAccumulator(str(run))
    events.Reload()
    acc = events.Scalars("val/acc")[-1]
    print(f"{run.parent.name}: val/acc {acc.value:.4f} at step {acc.step}")
    assert acc.value >= 0.97, run
PY

python3 scripts/benchmark.py --device cuda --json "$out/benchmark_cuda.json" "$@" 2>&1 | grep -v '^\(INFO\|GPU\|TPU\|LOCAL_RANK\)' | tail -n 12 | tee "$out/benchmark.log"
[ "${PIPESTATUS[0]}" -eq 0 ] || status=1
exit $status
