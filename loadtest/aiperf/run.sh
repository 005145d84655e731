#!/usr/bin/env bash
# NVIDIA AIPerf against Triton's HTTP generate_stream (SSE) of the `chat` model: chats (MODE=chat, default)
# or plain generations of AIPerf's prompts without memory (MODE=prompt): time to first token, inter-token
# latency, request and token throughput. AIPerf holds multi-turn conversations (CONVERSATIONS x TURNS); in
# chat mode each conversation id maps to one memory conversation, so later turns recall earlier ones. `make aiperf` installs AIPerf in .venv-aiperf
# (its own pins) and runs this against a running server (make serve).
set -euo pipefail
cd "$(dirname "$0")/../.."
AIPERF=${AIPERF:-.venv-aiperf/bin/aiperf}
MODE=${MODE:-chat}
URL=${IMEM_HTTP_URL:-http://localhost:${HTTP_PORT:-8000}}
CONCURRENCY=${CONCURRENCY:-8}
REQUESTS=${REQUESTS:-200}
CONVERSATIONS=${CONVERSATIONS:-32}
TURNS=${TURNS:-6}
MAX_TOKENS=${MAX_TOKENS:-32}
INPUT_TOKENS=${INPUT_TOKENS:-40}
TOKENIZER=${IMEM_TOKENIZER:-${IMEM_MODEL:-.build/dev-model}}
OUT=${OUT:-results/aiperf/$MODE-$(date -u +%Y%m%dT%H%M%SZ)}
mkdir -p "$OUT"
exec "$AIPERF" profile --model chat --tokenizer "$TOKENIZER" \
  --endpoint-type template --custom-endpoint "/v2/models/chat/generate_stream" --url "$URL" --streaming \
  --extra-inputs "payload_template:loadtest/aiperf/${MODE}_generate_stream.jinja" --extra-inputs response_field:text_output \
  --concurrency "$CONCURRENCY" --request-count "$REQUESTS" \
  --conversation-num "$CONVERSATIONS" --conversation-turn-mean "$TURNS" \
  --synthetic-input-tokens-mean "$INPUT_TOKENS" --output-tokens-mean "$MAX_TOKENS" \
  --artifact-dir "$OUT" --ui-type simple "$@"
