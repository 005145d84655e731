#!/usr/bin/env bash
# Entry point of the production image (docker/Dockerfile).
#   triton (default)   tritonserver on the repository's model_repository/, with the flags `imem serve` uses
#                      (serve/imem_serve/triton.py, TritonServer.command; deploy/check.sh compares the two)
#   gateway [ARGS...]  the OpenAI-compatible gateway: imem gateway ARGS (e.g. --url grpc://triton:8001)
#   anything else      run as given
# Settings come from the environment only (python_backends/imem/config.py, gateway/imem_gateway/settings.py);
# IMEM_ADMIN_KEY is the value of the `imem-admin` header Triton's restricted APIs require.
set -euo pipefail

# As `imem serve` sets for Triton (serve/imem_serve/triton.py, server_environment).
export TOKENIZERS_PARALLELISM="${TOKENIZERS_PARALLELISM:-false}"

# The repository's own model_repository/ (copied unchanged) and Triton's backends folder, where our
# Python-based backends (embedder, memory, llm) sit beside the python backend.
MODEL_REPOSITORY=/opt/imem/model_repository
BACKENDS=/opt/tritonserver/backends
# Seconds tritonserver waits for requests in flight when asked to stop (TritonServer.exit_timeout).
EXIT_TIMEOUT=20
# Triton's admin surfaces stay closed: only callers with the admin header reach them (RESTRICTED_APIS).
RESTRICTED_APIS="model-repository,shared-memory,trace,logging"

command="${1:-triton}"
case "$command" in
  triton)
    shift || true
    admin="${IMEM_ADMIN_KEY:-}"
    if [ -z "$admin" ]; then
      # As the launcher does: a random key per start, so the admin APIs are closed to everyone.
      admin="$(python3 -c 'import os; print(os.urandom(16).hex())')"
      echo "entrypoint: IMEM_ADMIN_KEY is not set: Triton's admin APIs get a random key for this run" >&2
    elif [[ ! "$admin" =~ ^[A-Za-z0-9._~-]+$ ]]; then
      echo "entrypoint: IMEM_ADMIN_KEY may hold only letters, digits and . _ ~ - (it is part of a Triton flag)" >&2
      exit 2
    fi
    # The key stays on tritonserver's command line (as with `imem serve`), not in the models' environment.
    unset IMEM_ADMIN_KEY
    exec tritonserver \
      --model-repository="$MODEL_REPOSITORY" \
      --backend-directory="$BACKENDS" \
      --http-port="${HTTP_PORT:-8000}" \
      --grpc-port="${GRPC_PORT:-8001}" \
      --metrics-port="${METRICS_PORT:-8002}" \
      --http-address="${IMEM_HOST:-0.0.0.0}" \
      --grpc-address="${IMEM_HOST:-0.0.0.0}" \
      --log-verbose=0 \
      --disable-auto-complete-config \
      --exit-timeout-secs="$EXIT_TIMEOUT" \
      --http-restricted-api="${RESTRICTED_APIS}:imem-admin=${admin}" \
      --grpc-restricted-protocol="${RESTRICTED_APIS}:imem-admin=${admin}" \
      "$@"
    ;;
  gateway)
    shift
    # Not needed by the gateway: keep it out of its environment.
    unset IMEM_ADMIN_KEY QDRANT_API_KEY
    exec imem gateway "$@"
    ;;
  *)
    exec "$@"
    ;;
esac
