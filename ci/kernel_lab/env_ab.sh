# Same-lease A / B of one source tree under several environment settings (trees_ab.sh compares trees):
# `toolkit.bench.formats` (bf16 the peer of every ratio) once per setting given, in the order given, so pass
# them alternating (A B A B) to see the machine's drift. Each argument is "label:VAR=value VAR2=value"; results
# land under $OUT as formats-<label>-<n>.log and summary-<label>-<n>.json. Run after the .whl prefix (which sets
# PYTHONPATH=$PWD:/tmp/site), e.g.
#     bash ci/kernel_lab/env_ab.sh "cluster:OPSCTL_CLUSTER_SPLITK=1" "global:OPSCTL_CLUSTER_SPLITK=0" \
#         "cluster:OPSCTL_CLUSTER_SPLITK=1" "global:OPSCTL_CLUSTER_SPLITK=0"
set -u
FORMATS=${FORMATS:-bf16,awq-cuda,int8-cuda}
n=0
for arm in "$@"; do
  n=$((n + 1)); label=${arm%%:*}; settings=${arm#*:}
  start=$SECONDS
  env $settings python3 -m toolkit.bench.formats preset:qwen2.5-7b --formats "$FORMATS" --no-kv \
      --out "/tmp/env-ab-$label-$n" > "$OUT/formats-$label-$n.log" 2>&1
  echo "$label-$n ($settings): rc=$? in $((SECONDS - start)) s"
  cp "/tmp/env-ab-$label-$n/summary.json" "$OUT/summary-$label-$n.json" 2>/dev/null
  tail -4 "$OUT/formats-$label-$n.log"
done
