# Lab 13 in one device call, results under $OUT: the stream-K kernel's GPU tests (int4 and int8 variants against
# their references), then the lab (engine's few-row kernel against every stream variant at Qwen2.5-7B's shapes).
# Run on the GPU machine from the checkout (after the .whl prefix): bash ci/kernel_lab/stream_run.sh
set -u
t0=$(date +%s)
python3 -c "from engine.kernels import w4_mma; w4_mma.extension()" > "$OUT/build.log" 2>&1; echo "build rc=$? $(( $(date +%s) - t0 )) s"
tail -5 "$OUT/build.log"
python3 -m pytest -m gpu -q -x tests/kernels/test_w4_mma.py tests/kernels/test_w8_mma.py -k stream > "$OUT/pytest-stream.log" 2>&1
echo "pytest rc=$?"; tail -15 "$OUT/pytest-stream.log"
timeout 300 python3 ci/kernel_lab/stream_lab.py "$OUT/lab13.json" ${LAB_ARGS:-} > "$OUT/lab13.log" 2>&1; echo "lab13 rc=$?"
grep " of peak)" "$OUT/lab13.log"
# The engine A / B in the same lease: the few-row kernel (OPSCTL_W4_STREAM=0, the bf16 engine the peer), then the
# stream-K kernel for 1-8 rows (int4 and int8 weights and the int8 head), then the engine GPU tests on it.
OPSCTL_W4_STREAM=0 python3 -m toolkit.bench.formats preset:qwen2.5-7b --no-kv --formats bf16,awq-cuda,int8-cuda \
  --out /tmp/formats-few > "$OUT/formats-few.log" 2>&1; echo "formats few rc=$?"
cp /tmp/formats-few/summary.json "$OUT/summary-few.json" 2>/dev/null
OPSCTL_W4_STREAM=1 python3 -m toolkit.bench.formats preset:qwen2.5-7b --no-kv --formats bf16,awq-cuda,int8-cuda \
  --out /tmp/formats-stream > "$OUT/formats-stream.log" 2>&1; echo "formats stream rc=$?"
cp /tmp/formats-stream/summary.json "$OUT/summary-stream.json" 2>/dev/null
grep -hE "^(decode|throughput)" "$OUT/formats-few.log" "$OUT/formats-stream.log"
OPSCTL_W4_STREAM=1 timeout 120 python3 -m pytest -m gpu -q tests/engine/test_gpu_w4_cuda.py tests/engine/test_gpu_w8_cuda.py \
  tests/engine/test_gpu_early_launch.py tests/engine/test_int8_head.py > "$OUT/pytest-engine-stream.log" 2>&1
echo "engine tests (stream) rc=$?"; tail -3 "$OUT/pytest-engine-stream.log"
