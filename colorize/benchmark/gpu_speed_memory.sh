#!/usr/bin/env bash
# Speed and memory on the GPU: the whole before/after bench set in one script, ~8 minutes on an H200, results in $OUT
# (the XL steps, last, add ~4 minutes: they run when the budget is left, or alone with BENCH_STEPS, below).
#
# Run with the device tool from the repo root, kind nvidia-h200, carry [".gpu", ".whl"] (both git-ignored:
# .whl = the open_clip wheels, .gpu/official-v1-h200.json = ../shared/benchmarks' official H200 figures):
#   bash colorize/benchmark/gpu_speed_memory.sh
# Local CPU smoke test of the same script (tiny model, seconds per step):
#   BENCH_SMOKE=1 OUT=/tmp/bench-out bash colorize/benchmark/gpu_speed_memory.sh
# Only some steps (names below, space-separated), e.g. the XL rows alone (~3 minutes on an H200):
#   BENCH_STEPS="xl xlbg xlv2bg xllowvram" bash colorize/benchmark/gpu_speed_memory.sh
#
# Steps, most important first; each runs only if its time estimate fits the remaining budget
# (BENCH_BUDGET_S, default 470 s), and under its own timeout:
#   baseline  eager fp16, 512/768/1024, FLOPs (the "before" row)
#   graphs    + CUDA graphs of the guided U-Net call (the launch-bound 512²)
#   lowvram8  1024², --low-vram under an 8 GiB cap (set_per_process_memory_fraction)
#   tolerance fp16 and bf16 vs fp32, full pipeline on the same random weights, 512²
#   tile64    1024², VAE tiling on, 64-latent tiles / 16 overlap (peak memory, decode time, |Δ| vs untiled)
#   tile72    1024², 72-latent tiles / 16 overlap (2×2 tiles: less decode work)
#   lowvram8t 1024², --low-vram + tiling under the 8 GiB cap
#   best      CUDA graphs + channels-last, 512/768/1024
#   compile   torch.compile (default mode) of the U-Net at 1024² (the U-Net efficiency target), if time is left
#   injection attention injection (fidelity 0.5) at 512² and 1024²: its cost on CUDA fp16 (compare with baseline)
#   isnet     one ISNet mask forward on the apps' 1024 canvas
#   gan       one chapter-4 GAN colorization (tag encoder + generator, random full-size weights) at 1024², fp16
#             autocast; ganfp32 the same in float32 (thesis Tab. 5.5: 57 ms)
#   xl        ColorizeDiffusion XL sdxl, 1024², its app's sampler (DPM++ 3M SDE, exponential), fp16, FLOPs: random
#             full-size weights built on the GPU (U-Net 2.56 B, CLIP-bigG 1.84 B, tagger, VAE fp32)
#   xlbg      sdxl with background separation (synthetic masks: background tokens, masked split cross-attention)
#   xlv2bg    xlv2 with background separation (synthetic masks: background tokens, VAE encode, ReferenceNet bank)
#   xllowvram sdxl 1024², --low-vram (CLIP-bigG + tagger and the U-Net on the CPU except while they run)
#   trainxl   one XL base-stage training step (training/bench_gpu.py): 1024², batch 1, bf16, gradient
#             checkpointing, the Gram loss on (two U-Net passes), random full-size weights → $OUT/trainxl.json
# Output ($OUT, 3 files): runs.json (every run's bench JSON by name), summary.md (table + ratios to the
# official H200 figures and the speed targets), logs.txt (every run's console output).
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-/tmp/bench-out}
RUNS=/tmp/bench-runs
rm -rf "$RUNS"; mkdir -p "$RUNS" "$OUT"
OFFICIAL=${BENCH_OFFICIAL:-.gpu/official-v1-h200.json}
BUDGET=${BENCH_BUDGET_S:-$([ -z "${BENCH_SMOKE:-}" ] && echo 470 || echo 1200)}

if [ -z "${BENCH_SMOKE:-}" ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site:$PWD
  PY=python3
  RES="512 768 1024"; BIG=1024; SMALL=512; CANVAS=1024; XLRES=1024; GANRES=1024
  COMMON=(--steps 20 --sampler dpmpp_2m --scheduler karras --ref-cfg 4 --sketch-cfg 1 --precision fp16
          --official "$OFFICIAL" --overwrite)
  SCALE=1; COMPILE=(--compile)
else  # CPU smoke test: tiny model, 2 steps
  PY=${PYTHON:-.venv/bin/python}
  export PYTHONPATH=$PWD
  RES="64 128"; BIG=128; SMALL=64; CANVAS=128; XLRES=64; GANRES=64
  COMMON=(--steps 2 --sampler dpmpp_2m --scheduler karras --ref-cfg 4 --sketch-cfg 1 --device cpu --config tiny
          --official "$OFFICIAL" --overwrite)
  SCALE=0; COMPILE=(--compile --compile-backend eager)  # the plumbing only: inductor on 2 CPU cores takes minutes
fi

{ nvidia-smi -L 2>/dev/null; $PY -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)"; } \
  | tee "$RUNS/env.txt"

# bench NAME ESTIMATE_S ARGS... : run if ESTIMATE_S fits the budget left; timeout = what is left (at most 4×estimate)
bench() {
  local name=$1 est=$2; shift 2
  if [ -n "${BENCH_STEPS:-}" ] && [[ " $BENCH_STEPS " != *" $name "* ]]; then return; fi
  local left=$((BUDGET - SECONDS))
  if [ "$left" -lt "$est" ]; then
    echo "== $name skipped: ${left}s left, needs ~${est}s" | tee -a "$RUNS/skipped.txt"; return
  fi
  local limit=$(( left < 4 * est ? left : 4 * est )); [ "$limit" -lt 30 ] && limit=30
  echo "== $name (limit ${limit}s, t=${SECONDS}s): $*"
  timeout -k 10 "$limit" $PY -m colorize bench "${COMMON[@]}" "$@" --json "$RUNS/$name.json" >"$RUNS/$name.log" 2>&1
  echo "   rc=$? after $((SECONDS))s"; tail -n 6 "$RUNS/$name.log"
}

bench baseline  90 --res $RES --runs 3 --warmup 1 --unet-iters 10
bench graphs    60 --res $RES --runs 3 --warmup 1 --unet-iters 10 --no-flops --cuda-graphs
bench lowvram8  40 --res $BIG --runs 2 --warmup 1 --unet-iters 5 --no-flops --low-vram --memory-cap-gib 8
bench tolerance 45 --res $SMALL --runs 1 --warmup 0 --unet-iters 2 --no-flops --tolerance
bench tile64    30 --res $BIG --runs 2 --warmup 1 --unet-iters 2 --no-flops --vae-tiling on --vae-tile 64 --vae-overlap 16
bench tile72    30 --res $BIG --runs 2 --warmup 1 --unet-iters 2 --no-flops --vae-tiling on --vae-tile 72 --vae-overlap 16
bench lowvram8t 40 --res $BIG --runs 2 --warmup 1 --unet-iters 5 --no-flops --low-vram --memory-cap-gib 8 --vae-tiling on
bench best      60 --res $RES --runs 3 --warmup 1 --unet-iters 10 --no-flops --cuda-graphs --channels-last
bench compile   90 --res $BIG --runs 3 --warmup 1 --unet-iters 10 --no-flops "${COMPILE[@]}"
bench injection 60 --res $SMALL $BIG --runs 2 --warmup 1 --unet-iters 2 --no-flops --injection  # attention injection's cost on CUDA
bench isnet     20 --isnet $CANVAS --runs 5 --warmup 2  # one ISNet mask forward (the apps' 1024 canvas)
bench gan       20 --gan $GANRES --runs 5 --warmup 2  # one chapter-4 GAN forward (thesis Tab. 5.5)
bench ganfp32   20 --gan $GANRES --runs 5 --warmup 2 --precision fp32
XL=(--sampler dpmpp_3m_sde --scheduler auto --res $XLRES)
bench xl        60 --family sdxl "${XL[@]}" --runs 3 --warmup 1 --unet-iters 10
bench xlbg      45 --family sdxl --bg-enhance "${XL[@]}" --runs 2 --warmup 1 --unet-iters 5
bench xlv2bg    60 --family xlv2 --bg-enhance "${XL[@]}" --runs 2 --warmup 1 --unet-iters 5
bench xllowvram 60 --family sdxl "${XL[@]}" --runs 2 --warmup 1 --unet-iters 3 --no-flops --low-vram
if [ -z "${BENCH_STEPS:-}" ] || [[ " $BENCH_STEPS " == *" trainxl "* ]]; then
  left=$((BUDGET - SECONDS))
  if [ "$left" -lt 90 ]; then
    echo "== trainxl skipped: ${left}s left, needs ~90s" | tee -a "$RUNS/skipped.txt"
  else
    TRAIN=(--batch 1 --res $XLRES --steps 5 --warmup 2); [ "$SCALE" = 0 ] && TRAIN=(--batch 2 --res 64 --steps 1 --warmup 1 --device cpu --preset tiny)
    echo "== trainxl (limit ${left}s, t=${SECONDS}s)"
    timeout -k 10 "$left" $PY -m training.bench_gpu --stage xl_base "${TRAIN[@]}" --budget-s "$left" \
      --out "$OUT/trainxl.json" >"$RUNS/trainxl.txt" 2>&1
    echo "   rc=$? after $((SECONDS))s"; tail -n 3 "$RUNS/trainxl.txt"
  fi
fi

if [ "$SCALE" = 0 ]; then  # the smoke test cannot honour CUDA-only options: check they are refused cleanly
  for f in "$RUNS"/graphs.log "$RUNS"/lowvram8*.log "$RUNS"/best.log; do
    [ -f "$f" ] && grep -q "need a CUDA device" "$f" && echo "smoke: $(basename "$f") refused as expected"
  done
  rm -f "$RUNS"/graphs.* "$RUNS"/lowvram8*.* "$RUNS"/best.*
fi

$PY -m colorize.benchmark.summary "$RUNS" "$OUT" "$OFFICIAL"
{ for f in "$RUNS"/env.txt "$RUNS"/skipped.txt "$RUNS"/*.log "$RUNS"/trainxl.txt; do [ -f "$f" ] && { echo "##### $f"; cat "$f"; }; done; } \
  >"$OUT/logs.txt"
echo "done in ${SECONDS}s; files: $(ls "$OUT")"
