#!/usr/bin/env bash
# Offline checks of the images, the compose file and the Helm chart, with real tools (deploy/install-tools.sh
# puts them in .build/deploy-tools). Prints what it checked; exits non-zero on any problem.
# Nothing here builds an image or talks to a cluster: there is no Docker engine and no Kubernetes here.
#
#   deploy/install-tools.sh && deploy/check.sh
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TOOLS="${DEPLOY_TOOLS:-$ROOT/.build/deploy-tools}"
OUT="$ROOT/.build/deploy-check"
BIN="$TOOLS/venv/bin"
PY="$BIN/python"
PROMTOOL="$TOOLS/prometheus/usr/bin/promtool"
KUBE_VERSION="${KUBE_VERSION:-1.33.0}"
export KUBE_VERSION="v${KUBE_VERSION#v}"
cd "$ROOT" || exit 2

failures=()
section() { printf '\n== %s\n' "$*"; }
# run LABEL CMD...: runs a check, records it as failed when it exits non-zero.
run() {
  local label="$1"; shift
  if "$@"; then
    :
  else
    failures+=("$label")
    echo "  FAILED: $label"
  fi
}
quiet_ok() {  # quiet_ok LABEL CMD...: shows the output only when the command fails
  local label="$1"; shift
  local output
  if output="$("$@" 2>&1)"; then
    echo "  ok: $label"
  else
    printf '%s\n' "$output" | sed 's/^/    /'
    failures+=("$label")
    echo "  FAILED: $label"
  fi
}
is_elf() { [ "$(head -c 4 "$1" | od -An -c | tr -d ' ')" = "177ELF" ]; }

section "tools (.build/deploy-tools, from deploy/install-tools.sh)"
for tool in "$BIN/hadolint" "$BIN/shellcheck" "$BIN/kubernetes-validate" "$BIN/check-jsonschema" "$BIN/yamllint" "$PY"; do
  if [ ! -x "$tool" ]; then
    echo "  missing: $tool (run deploy/install-tools.sh)"
    exit 2
  fi
done
for binary in "$BIN/hadolint" "$BIN/shellcheck"; do
  if is_elf "$(readlink -f "$binary")"; then
    echo "  ok: $(basename "$binary") is a native executable: $("$binary" --version | head -2 | tr '\n' ' ')"
  else
    echo "  FAILED: $binary is not the real (ELF) binary"; failures+=("$(basename "$binary") binary")
  fi
done
echo "  ok: helm: Helm's Go SDK through helm-python-sdk $("$BIN/pip" show helm-python-sdk 2>/dev/null | sed -n 's/^Version: //p') (no helm CLI on PyPI/npm/apt)"
echo "  ok: kubernetes-validate $("$BIN/pip" show kubernetes-validate 2>/dev/null | sed -n 's/^Version: //p') (kubeconform is not on PyPI/npm/apt)"
[ -x "$PROMTOOL" ] && echo "  ok: $("$PROMTOOL" --version 2>&1 | head -1)"
command -v docker-compose >/dev/null && echo "  ok: docker-compose $(docker-compose version --short 2>/dev/null) (v1, Debian)"

section "Dockerfiles: hadolint (every rule, info and up)"
for dockerfile in docker/Dockerfile docker/Dockerfile.cpu; do
  quiet_ok "hadolint $dockerfile" "$BIN/hadolint" --failure-threshold info "$dockerfile"
done

section "shell scripts: bash -n and shellcheck"
for script in docker/entrypoint.sh deploy/check.sh deploy/install-tools.sh; do
  quiet_ok "bash -n $script" bash -n "$script"
  quiet_ok "shellcheck $script" "$BIN/shellcheck" "$script"
done
quiet_ok "python syntax of docker/healthcheck.py, deploy/checks.py" "$PY" -c \
  'import ast, sys; [ast.parse(open(f).read(), f) for f in sys.argv[1:]]' docker/healthcheck.py deploy/checks.py

section "docker/entrypoint.sh, run with stand-ins for tritonserver and imem"
fake="$OUT/fake-bin"
rm -rf "$fake" && mkdir -p "$fake"
# A stand-in that prints its argv, one argument per line ($0 and $@ are meant for the stand-in's shell).
# shellcheck disable=SC2016
printf '#!/bin/sh\nprintf "%%s\\n" "$0" "$@"\n' > "$fake/tritonserver"
cp "$fake/tritonserver" "$fake/imem"
chmod +x "$fake/tritonserver" "$fake/imem"
entry() { env -i PATH="$fake:/usr/bin:/bin" HOME=/tmp "$@"; }
out="$(entry IMEM_ADMIN_KEY=s3cret-key HTTP_PORT=18000 bash docker/entrypoint.sh triton 2>&1)"
if grep -qx -- "--http-restricted-api=model-repository,shared-memory,trace,logging:imem-admin=s3cret-key" <<<"$out" \
   && grep -qx -- "--http-port=18000" <<<"$out" && grep -qx -- "--model-repository=/opt/imem/model_repository" <<<"$out"; then
  echo "  ok: triton: the admin key and ports from the environment reach tritonserver's flags"
else
  printf '%s\n' "$out" | sed 's/^/    /'; failures+=("entrypoint triton"); echo "  FAILED: entrypoint triton"
fi
out="$(entry bash docker/entrypoint.sh 2>&1)"
if grep -q "imem-admin=[0-9a-f]\{32\}$" <<<"$out"; then
  echo "  ok: no IMEM_ADMIN_KEY: a random 128-bit key for the run (admin APIs closed)"
else
  printf '%s\n' "$out" | sed 's/^/    /'; failures+=("entrypoint random key"); echo "  FAILED: entrypoint random key"
fi
if entry IMEM_ADMIN_KEY='a,b' bash docker/entrypoint.sh triton >/dev/null 2>&1; then
  failures+=("entrypoint key check"); echo "  FAILED: an admin key with a comma was accepted"
else
  echo "  ok: an admin key that would break Triton's flag syntax is refused"
fi
out="$(entry IMEM_ADMIN_KEY=k QDRANT_API_KEY=q bash docker/entrypoint.sh gateway --url grpc://triton:8001 2>&1)"
if [ "$out" = "$(printf '%s\n' "$fake/imem" gateway --url grpc://triton:8001)" ]; then
  echo "  ok: gateway: runs \`imem gateway --url grpc://triton:8001\`"
else
  printf '%s\n' "$out" | sed 's/^/    /'; failures+=("entrypoint gateway"); echo "  FAILED: entrypoint gateway"
fi
if entry HTTP_PORT=1 "$PY" docker/healthcheck.py triton >/dev/null 2>&1; then
  failures+=("healthcheck"); echo "  FAILED: healthcheck.py reports a closed port healthy"
else
  echo "  ok: healthcheck.py reports unhealthy when nothing answers"
fi

section "images: model repository, backends, launcher flags, user, health check, secrets"
run "images" "$PY" deploy/checks.py images

section "Dockerfile.cpu is built the way \`make serve\` builds its environment"
run "Makefile parity" "$PY" deploy/checks.py makefile

section "settings: production.env, compose and chart keys are documented variables"
run "settings" "$PY" deploy/checks.py settings

section "compose file"
# Values for the variables the file requires (it refuses to resolve without them).
compose_env=(IMEM_ADMIN_KEY=check QDRANT_API_KEY=check GRAFANA_ADMIN_PASSWORD=check MODELS_DIR=/srv/models
             IMEM_KEYS_FILE=/srv/imem/keys.json)
quiet_ok "compose-spec JSON schema (check-jsonschema vendor.compose-spec)" \
  "$BIN/check-jsonschema" --builtin-schema vendor.compose-spec docker/compose.yaml
if command -v docker-compose >/dev/null; then
  quiet_ok "docker-compose config (v1, resolves variables, anchors and services)" \
    env "${compose_env[@]}" docker-compose -f docker/compose.yaml config -q
  if env -u IMEM_ADMIN_KEY "${compose_env[@]/IMEM_ADMIN_KEY=check/IMEM_ADMIN_KEY=}" \
      docker-compose -f docker/compose.yaml config -q >/dev/null 2>&1; then
    echo "  FAILED: compose resolves without IMEM_ADMIN_KEY"; failures+=("compose IMEM_ADMIN_KEY required")
  else
    echo "  ok: compose refuses to start without IMEM_ADMIN_KEY"
  fi
else
  echo "  skipped: docker-compose config (docker-compose not installed)"
fi
run "compose" "$PY" deploy/checks.py compose
if [ -x "$PROMTOOL" ]; then
  quiet_ok "promtool check config docker/prometheus.yml" "$PROMTOOL" check config docker/prometheus.yml
else
  echo "  skipped: promtool (not installed)"
fi

section "Grafana provisioning and dashboard"
run "grafana" "$PY" deploy/checks.py grafana

section "YAML style (yamllint)"
yaml_files=(docker/compose.yaml docker/prometheus.yml docker/grafana/provisioning/datasources/prometheus.yaml
            docker/grafana/provisioning/dashboards/imem.yaml deploy/helm/imem/Chart.yaml
            deploy/helm/imem/values.yaml deploy/helm/imem/ci/*.yaml)
quiet_ok "yamllint ${#yaml_files[@]} files" "$BIN/yamllint" -s \
  -d '{extends: default, rules: {line-length: {max: 120}, document-start: disable, truthy: {check-keys: false}, comments: {min-spaces-from-content: 1}}}' \
  "${yaml_files[@]}"

section "Helm chart deploy/helm/imem: lint, template, refusals, Qdrant dependency"
echo "  note: the Qdrant chart cannot be downloaded here, so rendering uses qdrant.enabled=false (or renders"
echo "        only this chart's templates) and the dependency block is checked on its own"
run "helm" "$PY" deploy/checks.py helm

section "rendered manifests: Kubernetes schemas (kubernetes-validate --strict, Kubernetes $KUBE_VERSION)"
rm -rf "$OUT/validate"
"$PY" deploy/checks.py split "$OUT/rendered" "$OUT/validate"
for manifest in "$OUT"/validate/*.yaml; do
  quiet_ok "kubernetes-validate $(basename "$manifest")" \
    "$BIN/kubernetes-validate" --strict --no-warn -k "${KUBE_VERSION#v}" "$manifest"
done
run "ServiceMonitor (a CRD: checked by shape)" "$PY" deploy/checks.py servicemonitor "$OUT/rendered"

section "not checked here"
echo "  - building either image and running it (no Docker engine), GPU start-up (no GPU), a cluster install"
echo "    (no Kubernetes), the Qdrant subchart's own templates (its chart cannot be downloaded here)"

echo
if [ "${#failures[@]}" -gt 0 ]; then
  echo "deploy/check.sh: ${#failures[@]} check(s) failed: ${failures[*]}"
  exit 1
fi
echo "deploy/check.sh: every check passed (rendered manifests in ${OUT#"$ROOT"/}/rendered)"
