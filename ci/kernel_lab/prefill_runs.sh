# one mixed step (16 decoding at context 512 + a 512-token prompt) per format; AWQ's dense chunk at 64 and 256 MB
run() { name=$1; shift; timeout 120 python3 -c "
import json, sys
import engine.kernels.quant_gemm as q
q.DENSE_CHUNK_BYTES = int(sys.argv[1]) << 20
from toolkit.bench.profile_step import profile
fmt = None if sys.argv[2] == 'hf' else sys.argv[2]
r = profile('preset:qwen2.5-7b', 16, 512, 8, fmt, 512, sys.argv[3] if len(sys.argv) > 3 else None)
r['dense_chunk_mb'] = int(sys.argv[1])
json.dump([r], open(sys.argv[-1] if False else '$OUT/prefill-$name.json', 'w'), indent=1)
print('$name', 'wall %.2f ms gpu %.2f ms' % (r['wall_ms_per_step'], r['gpu_kernel_ms_per_step']))
" "$@" 2>$OUT/prefill-$name.err || echo "$name failed"; }
run hf 64 hf
run awq-64mb 64 awq
run awq-256mb 256 awq
run awq-cuda-64mb 64 awq cuda
run awq-cuda-256mb 256 awq cuda
