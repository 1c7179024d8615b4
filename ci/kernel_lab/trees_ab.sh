# Same-lease A / B of source trees (e.g. main against branches or patches applied to it; the last use:
# reports/examples/h200/pending-ab-2026-12-05):
# `toolkit.bench.formats` (bf16 the peer of every ratio) from each tree given,
# then each tree's GPU tests named in $TESTS, results under $OUT (logs and summary JSON only: many files there
# do not come back). Prepare the trees here first, e.g. for branches:
#     for b in my-branch other-branch; do mkdir -p _ab/$b && git archive $b engine toolkit ci tests | tar -x -C _ab/$b; done
# (the folders travel with the working tree: 64 MiB in all, ~6.5 MB a tree) then on the GPU machine, after the
# .whl prefix (which sets PYTHONPATH=$PWD:/tmp/site):
#     FORMATS=bf16,awq-cuda,int8-cuda TESTS="tests/engine/test_gpu_w4_cuda.py" bash ci/kernel_lab/trees_ab.sh . _ab/*
# A tree's name in the results is its path with "/" as "-" ("." is "main"). ENV_<name>="VAR=value ..." sets variables for one tree.
# One tree under several environment settings (switches of one build): env_ab.sh.
set -u
source "$(dirname "$0")/ab_formats.sh"
for tree in "$@"; do
  name=$(echo "$tree" | sed 's#^\./*##; s#/#-#g'); name=${name:-main}; [ "$tree" = . ] && name=main
  env_var="ENV_$(echo "$name" | tr -c 'A-Za-z0-9\n' '_')"
  extra=${!env_var:-}
  ab_formats "$tree" "$name" "$extra"
  if [ -n "${TESTS:-}" ]; then
    (cd "$tree" && env $extra PYTHONPATH="$PWD:/tmp/site" python3 -m pytest -m gpu -q $TESTS > "$OUT/pytest-$name.log" 2>&1)
    echo "$name tests: $(tail -1 "$OUT/pytest-$name.log")"
  fi
done
