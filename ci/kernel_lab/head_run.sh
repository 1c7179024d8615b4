# Lab 12 and the engine's int8 LM head (--lm-head-int8) A / B in one device call, results under $OUT:
# the lab's JSON (the head alone: bf16 GEMV, int8 and int4 kernels at 1 / 8 / 64 rows), then
# `toolkit.bench.formats` with the bf16 engine the peer of AWQ and int8 on the CUDA kernels with and without the
# int8 head (same lease), the GPU tests that pin its tokens and logits, and a decode step's kernels with early
# launch off (clean per-kernel times: with it on, a kernel's time includes its wait for the one before).
# Run on the GPU machine from the checkout (after the .whl prefix): bash ci/kernel_lab/head_run.sh
set -u
timeout 240 python3 ci/kernel_lab/head_lab.py > "$OUT/lab12-stdout.log" 2> "$OUT/lab12.log"; echo "lab12 rc=$?"
grep -v '^ ' "$OUT/lab12.log" | tail -18
python3 -m toolkit.bench.formats preset:qwen2.5-7b --no-kv \
  --formats bf16,awq-cuda,awq-cuda-head8,int8-cuda,int8-cuda-head8 --out /tmp/formats-head8 > "$OUT/formats-head8.log" 2>&1
echo "formats rc=$?"
cp /tmp/formats-head8/summary.json "$OUT/summary-head8.json" 2>/dev/null
grep "x bf16" "$OUT/formats-head8.log"
python3 -m pytest -m gpu -q tests/engine/test_int8_head.py > "$OUT/pytest-head8.log" 2>&1; tail -1 "$OUT/pytest-head8.log"
for fmt in awq; do
  OPSCTL_PDL=0 timeout 120 python3 -m toolkit.bench.profile_step preset:qwen2.5-7b --batch 1 --context 512 \
    --model-format $fmt --w4-kernel cuda --json "$OUT/profile_step-pdl0-$fmt.json" > /dev/null 2>&1
  echo "profile $fmt (OPSCTL_PDL=0) rc=$?"
done
