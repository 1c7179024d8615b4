# The device call for the patches not yet run on a GPU (cluster-splitk, decode-fusions), in one command so that
# one machine start serves both: their GPU tests, then the formats A / B of each switch, alternated.
# Here first:   git apply ci/kernel_lab/patches/decode-fusions.patch ci/kernel_lab/patches/cluster-splitk.patch
# Then on the GPU machine (run tool, carry [".whl"]), after the .whl prefix (which sets PYTHONPATH=$PWD:/tmp/site):
#     bash ci/kernel_lab/patches/run_pending.sh
# ~8-9 minutes on an H100 (the CUDA extension's build ~1 min, each formats arm ~45 s); results under $OUT
# (pytest.log, formats-<arm>-<n>.log, summary-<arm>-<n>.json). The arms: all three switches on, all off, the
# attention fusions alone, the cluster reduction alone, then all on / all off again.
set -u
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name --format=csv,noheader
start=$SECONDS
timeout 240 python3 -m pytest -m gpu -q tests/kernels/test_decode_new_kv.py tests/kernels/test_decode_attention.py \
    tests/kernels/test_w4_mma.py tests/kernels/test_w8_mma.py tests/engine/test_gpu_decode_fusions.py \
    > "$OUT/pytest.log" 2>&1
echo "tests rc=$? in $((SECONDS - start)) s"; tail -8 "$OUT/pytest.log"
ALL="OPSCTL_CLUSTER_SPLITK=1 OPSCTL_FUSED_KV_WRITE=1 OPSCTL_FUSED_REDUCE=1"
NONE="OPSCTL_CLUSTER_SPLITK=0 OPSCTL_FUSED_KV_WRITE=0 OPSCTL_FUSED_REDUCE=0"
bash ci/kernel_lab/env_ab.sh "all:$ALL" "none:$NONE" \
    "fusions:OPSCTL_CLUSTER_SPLITK=0 OPSCTL_FUSED_KV_WRITE=1 OPSCTL_FUSED_REDUCE=1" \
    "cluster:OPSCTL_CLUSTER_SPLITK=1 OPSCTL_FUSED_KV_WRITE=0 OPSCTL_FUSED_REDUCE=0" "all:$ALL" "none:$NONE"
