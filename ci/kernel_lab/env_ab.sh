# Same-lease A / B of one source tree under several environment settings (trees_ab.sh compares trees):
# `toolkit.bench.formats` (bf16 the peer of every ratio) once per setting given, in the order given, so pass
# them alternating (A B A B) to see the machine's drift. Each argument is "label:VAR=value VAR2=value"; results
# land under $OUT as formats-<label>-<n>.log and summary-<label>-<n>.json. Run after the .whl prefix (which sets
# PYTHONPATH=$PWD:/tmp/site), e.g.
#     bash ci/kernel_lab/env_ab.sh "cluster:OPSCTL_CLUSTER_SPLITK=1" "global:OPSCTL_CLUSTER_SPLITK=0" \
#         "cluster:OPSCTL_CLUSTER_SPLITK=1" "global:OPSCTL_CLUSTER_SPLITK=0"
set -u
source "$(dirname "$0")/ab_formats.sh"
n=0
for arm in "$@"; do
  n=$((n + 1))
  ab_formats . "${arm%%:*}-$n" "${arm#*:}"
done
