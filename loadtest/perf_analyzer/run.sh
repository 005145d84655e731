#!/usr/bin/env bash
# Triton's perf_analyzer on the `embedder` model and on the `memory` model's recall operation (each called
# directly over gRPC, several concurrencies). PyPI's perf-analyzer resolves only to a placeholder here; the
# working binary is the one tritonclient 2.40.0's wheel ships, which needs libb64 (Debian) and
# libcudart.so.12 (the nvidia-cuda-runtime-cu12 wheel) even on a CPU: `make perf-analyzer` installs those in
# .venv-perf and runs this against a running server (make serve).
set -euo pipefail
cd "$(dirname "$0")/../.."
VENV=${PERF_VENV:-.venv-perf}
PA=${PERF_ANALYZER:-$VENV/bin/perf_analyzer}
GRPC=${IMEM_GRPC_ADDRESS:-localhost:${GRPC_PORT:-8001}}
CONCURRENCY=${CONCURRENCY:-1:32:8}
INTERVAL_MS=${INTERVAL_MS:-5000}
OUT=${OUT:-results/perf_analyzer/$(date -u +%Y%m%dT%H%M%SZ)}
mkdir -p "$OUT"
CUDART=$(ls -d "$VENV"/lib/python3*/site-packages/nvidia/cuda_runtime/lib 2>/dev/null | head -1)
export LD_LIBRARY_PATH="${CUDART}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"

# One conversation with history for recall to search (memory ingest through the imem CLI).
.venv/bin/python - "$OUT/history.jsonl" <<'PY'
import json, random, sys
from imem_bench.synthetic import history
with open(sys.argv[1], "w") as f:
    for line in history(random.Random(0), 200):
        f.write(json.dumps(line) + "\n")
PY
.venv/bin/imem memory delete --url "grpc://$GRPC" --tenant perf -c perf-analyzer >/dev/null 2>&1 || true
.venv/bin/imem memory ingest --url "grpc://$GRPC" --tenant perf -c perf-analyzer "$OUT/history.jsonl" >/dev/null

cat > "$OUT/embedder.json" <<'JSON'
{"data": [{"text": ["My sister works as a glaciologist in Reykjavik."]},
          {"text": ["What pet do I have at home?"]},
          {"text": ["I am preparing for a job interview on day 12; Ingrid will bring a telescope."]}]}
JSON
cat > "$OUT/memory.json" <<'JSON'
{"data": [{"operation": ["recall"], "tenant": ["perf"], "conversation_id": ["perf-analyzer"],
           "message": ["Who will bring the telescope?"]},
          {"operation": ["recall"], "tenant": ["perf"], "conversation_id": ["perf-analyzer"],
           "message": ["How much does Kwame owe me?"]}]}
JSON
for model in embedder memory; do
  echo "== perf_analyzer: $model (concurrency $CONCURRENCY)"
  "$PA" -m "$model" -u "$GRPC" -i grpc --input-data "$OUT/$model.json" --concurrency-range "$CONCURRENCY" \
    --measurement-interval "$INTERVAL_MS" -f "$OUT/$model.csv" | tee "$OUT/$model.txt" | \
    sed -n '/Inferences\/Second vs. Client Average Batch Latency/,$p'
done
echo "results in $OUT"
