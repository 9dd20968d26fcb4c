#!/usr/bin/env bash
# The GPU measurements of docs/RESULTS.md in one command, for a short lease of one CUDA GPU.
#
#   OUT=/some/dir DEADLINE=560 bash benchmarks/gpu_session.sh
#
# Runs from the repository root with robustreid importable (installed, or PYTHONPATH=src) and
# SynthPerson under data/ (generated if missing). In this order, each writing a log to $OUT:
#   1. the device and software (nvidia-smi, torch);
#   2. benchmarks/method_overhead.py on configs/market1501.yaml: ResNet-50 at 256 x 128,
#      batch 256 (full-batch probes), with AMP (the config's setting) and without;
#   3. benchmarks/ddp_overhead.py: training steps through DistributedDataParallel with one
#      process against the plain path (ResNet-50, batch 256, AMP);
#      benchmarks/clustering.py with the exact kNN on the GPU at N = 12,936 and N = 100,000;
#      benchmarks/clustering_scale.py: pseudo-labels for 1,000,000 features (d = 2048,
#      float16) with the blocked IVF search on the GPU (issue 17: at most 2 minutes);
#   4. the paired SynthPerson ablation ($CONFIG, by default the Market-sized preset, generated
#      under data/ if missing), seeds 1..$SEEDS, $JOBS runs at a time, stopped so that the
#      whole script ends by $DEADLINE seconds (finished runs are kept; the table and plot
#      cover them; the variants of each seed run in the order of $VARIANTS, by default
#      baseline, CSA + HPS, hard, CSA, HPS, so the main comparison fills first). The table goes
#      between the $MARKER markers of docs/RESULTS.md; for other variants, e.g. the momentum
#      0.5 pair, give them a marker of their own:
#        VARIANTS="baseline_m05 csa_hps_m05" MARKER=synthperson-results-gpu-momentum \
#          RUNS=runs/gpu_momentum ABLATION_ONLY=1 OUT=... bash benchmarks/gpu_session.sh
# The benchmarks run alone, before the ablation, so that nothing shares the GPU with them.
set -u
OUT=${OUT:?set OUT to a folder for the logs}
SEEDS=${SEEDS:-10}
JOBS=${JOBS:-10}
DEADLINE=${DEADLINE:-560}
VARIANTS=${VARIANTS:-baseline_mean csa_hps baseline_hard csa hps joint_csa}
CONFIG=${CONFIG:-configs/synthperson_market_ablation.yaml}
MARKER=${MARKER:-paired-ablation-gpu}
RUNS=${RUNS:-runs/gpu}  # results.json and run folders of the ablation
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1
mkdir -p "$OUT"

{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  "$PY" -c "import torch, torchvision; print('torch', torch.__version__, 'torchvision',
torchvision.__version__, 'cuda', torch.version.cuda, 'cudnn', torch.backends.cudnn.version(),
torch.cuda.get_device_name(0))"
  nproc; } > "$OUT/env.txt" 2>&1
cat "$OUT/env.txt"

if [ "${ABLATION_ONLY:-0}" != 1 ]; then  # ABLATION_ONLY=1 skips steps 2 and 3
echo "== method overhead, AMP"
timeout 150 "$PY" benchmarks/method_overhead.py --device cuda --train-probe 256 \
    --extract-probe 256 --repeat 5 --hps-batches 50 > "$OUT/overhead_amp.txt" 2>&1
tail -n 6 "$OUT/overhead_amp.txt"
echo "== method overhead, float32"
timeout 100 "$PY" benchmarks/method_overhead.py --device cuda --train-probe 256 \
    --extract-probe 256 --repeat 5 --hps-batches 50 --no-amp > "$OUT/overhead_fp32.txt" 2>&1
tail -n 4 "$OUT/overhead_fp32.txt"

echo "== DDP code path with one process against the plain one (torchrun, issue 16)"
timeout 120 "$PY" benchmarks/ddp_overhead.py --config configs/market1501.yaml --device cuda \
    --steps 20 --rounds 5 > "$OUT/ddp_overhead.txt" 2>&1
tail -n 4 "$OUT/ddp_overhead.txt"

echo "== clustering, kNN on the GPU"
{ timeout 60 "$PY" benchmarks/clustering.py --device cuda --skip-random --approx-n 0
  timeout 100 "$PY" benchmarks/clustering.py --device cuda --skip-random --approx-n 0 \
      --n 100000 --clusters 5400 --repeat 1; } > "$OUT/clustering_cuda.txt" 2>&1
grep -E "clustered|floor|ours total|ratio|post-kNN|clusters /" "$OUT/clustering_cuda.txt"

echo "== pseudo-labels for a million images, IVF search on the GPU"
timeout 300 "$PY" benchmarks/clustering_scale.py --sizes 1000000 --backends ivf \
    --device cuda --workdir "$OUT/clustering_scale" \
    --json "$OUT/clustering_scale_cuda.json" > "$OUT/clustering_scale_cuda.txt" 2>&1
grep -E "N=|ivf " "$OUT/clustering_scale_cuda.txt"
rm -rf "$OUT/clustering_scale"
fi

if [ "$CONFIG" = configs/synthperson_market_ablation.yaml ] && \
        [ ! -d data/synthperson_market/bounding_box_train ]; then
    echo "== rendering the Market-sized SynthPerson"
    "$PY" -m robustreid synth --preset market --out data/synthperson_market \
        --workers "$(nproc)" > "$OUT/synth.log" 2>&1
fi
ABLATION_SECONDS=$((DEADLINE - SECONDS - 30))
echo "== SynthPerson ablation, seeds 1..$SEEDS, $JOBS at a time, ${ABLATION_SECONDS}s"
cp docs/RESULTS.md "$OUT/RESULTS.md"
# shellcheck disable=SC2086  # $VARIANTS is a list of names
timeout -k 10 "$ABLATION_SECONDS" "$PY" scripts/synthperson_results.py --out "$RUNS" \
    --config "$CONFIG" --paired --only $VARIANTS --seeds $(seq 1 "$SEEDS") \
    --jobs "$JOBS" --threads 1 --marker "$MARKER" \
    --results-md "$OUT/RESULTS.md" --plot "$OUT/ablation_paired_gpu.png" > "$OUT/ablation.log" 2>&1
# after a timeout: merge what the workers finished and write the table and plot
pkill -f synthperson_results.py
"$PY" scripts/synthperson_results.py --out "$RUNS" --only _none_ --config "$CONFIG" --paired \
    --marker "$MARKER" --results-md "$OUT/RESULTS.md" \
    --plot "$OUT/ablation_paired_gpu.png" >> "$OUT/ablation.log" 2>&1
cp "$RUNS/results.json" "$OUT/results_gpu.json" 2>/dev/null
grep -A 12 "$MARKER:begin" "$OUT/RESULTS.md"
grep -E "Traceback|Error" "$OUT/ablation.log" | sort | uniq -c | head
echo "script seconds: $SECONDS"
