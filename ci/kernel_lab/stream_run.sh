# Lab 13 in one device call, results under $OUT: the stream-K kernel's GPU tests (int4 and int8 variants against
# their references), then the lab (engine's few-row kernel against every stream variant at Qwen2.5-7B's shapes).
# Run on the GPU machine from the checkout (after the .whl prefix): bash ci/kernel_lab/stream_run.sh
set -u
t0=$(date +%s)
python3 -c "from engine.kernels import w4_mma; w4_mma.extension()" > "$OUT/build.log" 2>&1; echo "build rc=$? $(( $(date +%s) - t0 )) s"
tail -5 "$OUT/build.log"
python3 -m pytest -m gpu -q -x tests/kernels/test_w4_mma.py tests/kernels/test_w8_mma.py -k stream > "$OUT/pytest-stream.log" 2>&1
echo "pytest rc=$?"; tail -15 "$OUT/pytest-stream.log"
timeout 300 python3 ci/kernel_lab/stream_lab.py ${LAB_ARGS:-} > "$OUT/lab13-stdout.log" 2> "$OUT/lab13.log"; echo "lab13 rc=$?"
grep -v '^{' "$OUT/lab13.log" | tail -40
