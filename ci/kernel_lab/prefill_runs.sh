# Usage: bash ci/kernel_lab/prefill_runs.sh [NAME:CHUNK_MB:FORMAT[:W4_KERNEL] ...]
# one mixed step (16 decoding at context 512 + a 512-token prompt) per format; AWQ's dense chunk at 64 and 256 MB
run() { name=$1; shift; timeout 120 python3 -c "
import json, sys
import engine.kernels.quant_gemm as q
q.DENSE_CHUNK_BYTES = int(sys.argv[1]) << 20
from toolkit.bench.profile_step import profile
fmt = None if sys.argv[2] == 'hf' else sys.argv[2]
r = profile('preset:qwen2.5-7b', 16, 512, 16, fmt, 512, sys.argv[3] if len(sys.argv) > 3 else None)
r['dense_chunk_mb'] = int(sys.argv[1])
json.dump([r], open('$OUT/prefill-$name.json', 'w'), indent=1)
print('$name', 'wall %.2f ms (median step %.2f) gpu %.2f ms' % (r['wall_ms_per_step'], r['wall_ms_median_step'], r['gpu_kernel_ms_per_step']))
" "$@" 2>$OUT/prefill-$name.err || echo "$name failed"; }
for spec in ${@:-hf:64:hf awq-64mb:64:awq awq-256mb:256:awq awq-cuda-64mb:64:awq:cuda awq-cuda-256mb:256:awq:cuda}; do
  IFS=: read -r name mb fmt kernel <<< "$spec"
  run $name $mb $fmt $kernel
done
