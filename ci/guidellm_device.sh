#!/usr/bin/env bash
# GuideLLM beside opsctl on a GPU machine with no registry (issues 11 and 12), in three steps:
#   bash ci/guidellm_device.sh wheels        here, with PyPI: GuideLLM 0.8.1's wheels for Python 3.12
#                                            into .whl_pa/ (pyarrow alone) and .whl_gl/ (the rest),
#                                            leaving out what the GPU image has (torch, transformers,
#                                            numpy, pandas, ...) and what .whl/ holds (the serving
#                                            stack). Two folders because one carry is at most 64 MiB.
#   bash ci/guidellm_device.sh install       there, once per machine: both folders' wheels (whichever
#                                            this call carried) into $GL_SITE (/tmp/gl), then a
#                                            `guidellm` command in $GL_VENV/bin that runs them.
#   bash ci/guidellm_device.sh compare|goodput OUT
#                                            there: ci/guidellm_compare.sh (mock server at 64 streams,
#                                            then `opsctl serve preset:qwen2.5-7b` at 64 and at 256
#                                            streams) or ci/guidellm_goodput.sh (the same preset, a
#                                            batch cap that makes a steep knee), results into OUT.
# The servers run on cores 0-7 and the clients on 8-15 (taskset) where the compare script pins them,
# so neither tool's CPU slows what it measures. Expects PYTHONPATH to hold the checkout and the
# serving stack (the device command's usual prefix). Knobs: GL_SITE, GL_VENV, MODEL, and every knob
# of the two scripts.
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
GL_SITE=${GL_SITE:-/tmp/gl}; GL_VENV=${GL_VENV:-/tmp/gllm-dev}
MODEL=${MODEL:-preset:qwen2.5-7b}
TOK=$ROOT/engine/models/assets/smollm2-tokenizer

case "${1:-}" in
wheels)
    # The GPU image's own packages (and their pins) stay in charge: these names are never carried.
    have='^(torch|nvidia_|triton|numpy|transformers|pandas|sympy|networkx|tokenizers|hf_xet|safetensors|mpmath|'
    have+='setuptools|jinja2|markupsafe|typer|pygments|rich|markdown_it|mdurl|click|httpx-|httpcore-|h11|anyio|idna|'
    have+='certifi|typing_extensions|packaging|pyyaml|tqdm|filelock|huggingface_hub|regex|fsspec)'
    tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
    pip download -q 'guidellm==0.8.1' --python-version 3.12 --only-binary=:all: \
        --platform manylinux2014_x86_64 --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 -d "$tmp" || exit 1
    rm -rf .whl_pa .whl_gl; mkdir -p .whl_pa .whl_gl
    for w in "$tmp"/*.whl; do
        name=$(basename "$w"); dist=${name%%-*}
        if [[ $name =~ $have ]] || ls .whl/"$dist"-*.whl > /dev/null 2>&1; then continue; fi
        if [[ $dist == pyarrow ]]; then cp "$w" .whl_pa/; else cp "$w" .whl_gl/; fi
    done
    du -sh .whl_pa .whl_gl
    ;;
install)
    mkdir -p "$GL_SITE" "$GL_VENV/bin"
    wheels=$(ls .whl_pa/*.whl .whl_gl/*.whl 2>/dev/null)
    [ -z "$wheels" ] || python3 -m pip install -q --no-index --no-deps --no-compile --upgrade --target "$GL_SITE" $wheels || exit 1
    cat > "$GL_VENV/bin/guidellm" <<EOF
#!/bin/sh
# GuideLLM from $GL_SITE, the serving stack's wheels behind it, the image's torch and transformers last
PYTHONPATH=$GL_SITE:\${PYTHONPATH:-} exec python3 -c 'import sys; from guidellm.__main__ import cli; sys.argv[0] = "guidellm"; sys.exit(cli())' "\$@"
EOF
    chmod +x "$GL_VENV/bin/guidellm"
    "$GL_VENV/bin/guidellm" --version || exit 1
    # the data path imports datasets (pyarrow) and the image's transformers: fail here, not mid-run
    PYTHONPATH=$GL_SITE:${PYTHONPATH:-} python3 -c 'import datasets, pyarrow, transformers, guidellm.benchmark' || exit 1
    ;;
compare|goodput)
    OUT=${2:?usage: $0 $1 OUT}
    mkdir -p "$OUT" /tmp/opsctl-bin
    printf '#!/bin/sh\nexec python3 -m toolkit "$@"\n' > /tmp/opsctl-bin/opsctl; chmod +x /tmp/opsctl-bin/opsctl
    export OPSCTL_BIN=/tmp/opsctl-bin/opsctl PYTHON_BIN=python3 TOKENIZER=$TOK COLUMNS=200
    gpu=$(nvidia-smi --query-gpu=name --format=csv,noheader | head -1)
    export MACHINE_NOTE="$(nproc) CPU cores, one $gpu; no other job on the machine"
    if [ "$1" = compare ]; then
        # The mock at 64 streams, then opsctl serve at 64 streams; SPREAD=1 adds the serve runs with both
        # tools' streams starting spread over a request time, SERVE_256=1 256 streams (neither with the mock);
        # SKIP_LOCKSTEP=1 leaves out the first (mock and lockstep serve).
        # OPSCTL_WARMUP=0: opsctl's users start together against the mock as GuideLLM's streams do
        # (the same load; with its default warm-up they start spread and the mock queues less).
        export SERVER_CPUS=${SERVER_CPUS:-0-7} CLIENT_CPUS=${CLIENT_CPUS:-8-15} SERVE_MODEL=$MODEL
        export SERVE_IN_LEN=${SERVE_IN_LEN:-512} SERVE_OUT_LEN=${SERVE_OUT_LEN:-256} SERVE_PREWARM=${SERVE_PREWARM:-64}
        export OPSCTL_WARMUP=${OPSCTL_WARMUP-0}
        MACHINE_NOTE+="; servers on cores $SERVER_CPUS, clients on $CLIENT_CPUS"
        [ "${SKIP_LOCKSTEP:-0}" = 1 ] || MOCK_C=64 MOCK_N=${MOCK_N:-1920} REPS=${REPS:-2} GLLM1_REPS=0 JITTER_REPS=0 \
            SERVE_C=64 SERVE_N=${SERVE_N_64:-512} SERVE_REPS=${SERVE_REPS:-2} SERVE_FLAGS="--max-batch-size 64" \
            RESULTS=/tmp/gc-64 OUT_JSON=$OUT/guidellm_compare-c64.json bash ci/guidellm_compare.sh "$GL_VENV"
        if [ "${SPREAD:-0}" = 1 ]; then  # the same serve runs with both tools' streams starting spread
            REPS=0 GLLM1_REPS=0 JITTER_REPS=0 OPSCTL_WARMUP= SERVE_WARMUP= GUIDELLM_RAMPUP_S=${GUIDELLM_RAMPUP_S:-2.4} \
                SERVE_C=64 SERVE_N=${SERVE_N_64:-512} SERVE_REPS=${SERVE_REPS:-2} SERVE_FLAGS="--max-batch-size 64" \
                RESULTS=/tmp/gc-64-spread OUT_JSON=$OUT/guidellm_compare-c64-spread.json bash ci/guidellm_compare.sh "$GL_VENV"
        fi
        if [ "${SERVE_256:-0}" = 1 ]; then
            REPS=0 GLLM1_REPS=0 JITTER_REPS=0 \
                SERVE_C=256 SERVE_N=${SERVE_N_256:-512} SERVE_REPS=${SERVE_REPS:-2} SERVE_FLAGS="--max-batch-size 256" \
                SERVE_PREWARM=256 RESULTS=/tmp/gc-256 OUT_JSON=$OUT/guidellm_compare-c256.json \
                bash ci/guidellm_compare.sh "$GL_VENV"
        fi
        tar -C /tmp -czf "$OUT/guidellm_compare-runs.tgz" $(cd /tmp && ls -d gc-64 gc-64-spread gc-256 2>/dev/null)
    else
        MODEL=$MODEL TUNE_GPU=${TUNE_GPU:-h200} IN_LEN=${IN_LEN:-512} OUT_LEN=${OUT_LEN:-64} \
            ENGINE_FLAGS=${ENGINE_FLAGS:-"--max-batch-size 16"} TTFT_MS=${TTFT_MS:-250} TPOT_MS=${TPOT_MS:-50} \
            PERCENTILE=${PERCENTILE:-90} INITIAL=${INITIAL:-4} MAX_STREAMS=${MAX_STREAMS:-64} REQUESTS=${REQUESTS:-64} \
            RAMPUP_S=${RAMPUP_S:-1} REPS=${REPS:-1} RESULTS=/tmp/gg OUT_JSON=$OUT/guidellm_goodput.json \
            bash ci/guidellm_goodput.sh "$GL_VENV"
        tar -C /tmp -czf "$OUT/guidellm_goodput-runs.tgz" gg
    fi
    ;;
*)
    echo "usage: $0 wheels | install | compare OUT | goodput OUT"; exit 2
    ;;
esac
