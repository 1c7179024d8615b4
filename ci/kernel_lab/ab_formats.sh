# Sourced by trees_ab.sh and env_ab.sh: one `toolkit.bench.formats` run of the A / B (bf16 the peer of every
# ratio) from a source tree under extra environment settings, its log and summary JSON under $OUT.
#     ab_formats TREE NAME "VAR=value VAR2=value"   ->  $OUT/formats-NAME.log, $OUT/summary-NAME.json
ab_formats() {
  local tree=$1 name=$2 settings=$3 start=$SECONDS
  (cd "$tree" && env $settings PYTHONPATH="$PWD:/tmp/site" python3 -m toolkit.bench.formats preset:qwen2.5-7b \
      --formats "${FORMATS:-bf16,awq-cuda,int8-cuda}" --no-kv --out "/tmp/ab-$name" > "$OUT/formats-$name.log" 2>&1)
  echo "$name ($settings): rc=$? in $((SECONDS - start)) s"
  cp "/tmp/ab-$name/summary.json" "$OUT/summary-$name.json" 2>/dev/null
  tail -4 "$OUT/formats-$name.log"
}
