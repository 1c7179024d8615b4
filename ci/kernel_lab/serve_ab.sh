# Same-run A/B of the HTTP server on an emulated 24 GiB card: bf16, AWQ with the CUDA kernel, AWQ with Triton;
# chat-like load (512-token prompts, 256 output tokens), closed loop at $CONCURRENCY users (32,56). Output under $OUT.
# Run on the GPU machine from the checkout: bash ci/kernel_lab/serve_ab.sh [bf16 awq-cuda awq-triton]
serve_and_bench() {
  name=$1; shift
  python3 -m toolkit serve preset:qwen2.5-7b --gpu-memory-gb 24 --server-port 23399 "$@" > $OUT/serve-$name.log 2>&1 &
  pid=$!
  for _ in $(seq 240); do python3 -c "import httpx; httpx.get('http://127.0.0.1:23399/v1/models', timeout=1).raise_for_status()" 2>/dev/null && break; sleep 1; done
  python3 -m toolkit bench --url http://127.0.0.1:23399 --input-len 512 --output-len 256 --ignore-eos \
    --concurrency ${CONCURRENCY:-32,56} --num-requests ${REQUESTS:-112} -o $OUT --run-id ab-$name --no-report > $OUT/bench-$name.log 2>&1
  echo "$name rc=$?"; grep -E "c=|tok/s" $OUT/bench-$name.log | tail -4
  kill $pid; wait $pid 2>/dev/null
}
for name in ${@:-bf16 awq-cuda awq-triton}; do
  case $name in
    bf16) serve_and_bench bf16 ;;
    awq-cuda) serve_and_bench awq-cuda --model-format awq --w4-kernel cuda ;;
    awq-triton) serve_and_bench awq-triton --model-format awq ;;
  esac
done
