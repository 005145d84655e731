"""The Python-level checks of deploy/check.sh (run with the tools venv: PyYAML, helm-python-sdk).

    python deploy/checks.py NAME [ARGS]

Each check prints what it verified and exits non-zero with the reasons when something is wrong. They read
the repository as it is (the launcher, the model configs, the Makefile, the settings modules), so a change
there that the images, the compose file or the chart do not follow is reported here.
"""

from __future__ import annotations

import ast
import json
import os
import re
import shlex
import sys
from pathlib import Path
from typing import NoReturn, Sequence

import yaml

ROOT = Path(__file__).resolve().parents[1]
DOCKER = ROOT / "docker"
CHART = ROOT / "deploy" / "helm" / "imem"
OUT = ROOT / ".build" / "deploy-check"
DOCKERFILES = ("Dockerfile", "Dockerfile.cpu")


class Problems:
    """What one check finds wrong. Each check collects its own and passes them to the helpers that look,
    so a check's verdict depends on nothing but its own run."""

    def __init__(self) -> None:
        self.messages: list[str] = []

    def add(self, message: str) -> None:
        self.messages.append(message)

    def finish(self) -> NoReturn:
        """Prints the problems and exits: non-zero when there are any."""
        for message in self.messages:
            print(f"  PROBLEM: {message}")
        sys.exit(1 if self.messages else 0)


def ok(message: str) -> None:
    print(f"  ok: {message}")


# ---- reading the repository ------------------------------------------------------------------------------
def dockerfile_instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    lines, current = [], ""
    for raw in path.read_text().splitlines():
        stripped = raw.strip()
        if not current and (not stripped or stripped.startswith("#")):
            continue
        if current and stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            current += stripped[:-1] + " "
            continue
        current += stripped
        lines.append(current)
        current = ""
    out = []
    for line in lines:
        word, _, rest = line.partition(" ")
        out.append((word.upper(), rest.strip()))
    return out


def launcher():
    """serve/imem_serve/launcher.py (importing it has no side effects: nothing is written, no pytriton)."""
    sys.path.insert(0, str(ROOT / "serve"))
    import imem_serve.launcher

    return imem_serve.launcher


SETTINGS_MODULES = (ROOT / "python_backends" / "imem" / "config.py", ROOT / "gateway" / "imem_gateway" / "settings.py")
LAUNCHER_MODULES = (ROOT / "serve" / "imem_serve" / "launcher.py", ROOT / "cli" / "imem_cli" / "main.py")


def documented_variables(modules=SETTINGS_MODULES) -> dict[str, str]:
    """Environment variables the settings modules read -> how they parse them (str, int, float)."""
    found: dict[str, str] = {}
    for path in modules:
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call) or not node.args:
                continue
            first = node.args[0]
            if not (isinstance(first, ast.Constant) and isinstance(first.value, str)):
                continue
            func = node.func
            name = func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else ""
            if name in ("_int", "_float", "_env", "get", "getenv") and re.fullmatch(r"[A-Z][A-Z0-9_]+", first.value):
                if name == "get" and not (isinstance(func, ast.Attribute) and isinstance(func.value, ast.Attribute)
                                          and func.value.attr == "environ"):
                    continue
                kind = {"_int": "int", "_float": "float"}.get(name, "str")
                if found.get(first.value, "str") == "str":
                    found[first.value] = kind
    return found


def env_file(path: Path, problems: Problems) -> dict[str, str]:
    values = {}
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if "=" not in line:
            problems.add(f"{path.relative_to(ROOT)}:{number}: not KEY=VALUE: {line!r}")
            continue
        key, _, value = line.partition("=")
        values[key.strip()] = value.strip()
    return values


def exported_metrics() -> dict[str, str]:
    """Metric names our models register with Triton -> kind: imem/metrics.py's table, which they register
    from (read without importing the package's dependencies)."""
    sys.path.insert(0, str(ROOT / "python_backends"))
    from imem.metrics import METRICS

    return {name: kind for name, (_, kind, _, _) in METRICS.items()}


TRITON_METRICS = ("nv_inference_request_success", "nv_inference_request_failure", "nv_inference_queue_duration_us",
                  "nv_inference_compute_infer_duration_us", "nv_inference_count")


# ---- checks ------------------------------------------------------------------------------------------------
def check_images() -> None:
    """The images hold the repository's own model_repository/ unchanged, our backends beside the python
    backend, and start Triton with the launcher's flags (the GPU image) or through the launcher (CPU)."""
    problems = Problems()
    triton = launcher()
    repo = triton.MODEL_REPOSITORY
    if repo != ROOT / "model_repository":
        problems.add(f"the launcher's model repository is {repo}, not the repository's model_repository/")
    backends_in_configs = {}
    for config in sorted((ROOT / "model_repository").glob("*/config.pbtxt")):
        text = config.read_text()
        match = re.search(r'^\s*backend:\s*"([^"]+)"', text, re.M)
        platform = re.search(r'^\s*platform:\s*"([^"]+)"', text, re.M)
        backends_in_configs[config.parent.name] = match.group(1) if match else (platform.group(1) if platform else "")
    ours = set(triton.OUR_BACKENDS)
    for model, backend in backends_in_configs.items():
        if backend not in ours | {"ensemble", "python"}:
            problems.add(f"model {model} uses backend {backend!r}, which no image provides")
        if backend in ours and not (ROOT / "python_backends" / backend / "model.py").is_file():
            problems.add(f"python_backends/{backend}/model.py is missing")
    ok(f"model configs use backends {sorted(set(backends_in_configs.values()))}; ours: {sorted(ours)}")

    for name in DOCKERFILES:
        path = DOCKER / name
        instructions = dockerfile_instructions(path)
        workdir = None
        copies = {}
        for word, args in instructions:
            if word == "WORKDIR":
                workdir = args
            if word == "COPY" and not args.startswith("--from"):
                parts = shlex.split(args)
                for source in parts[:-1]:
                    copies[source] = (parts[-1], workdir)
        if "model_repository" not in copies:
            problems.add(f"docker/{name} does not COPY model_repository")
            continue
        dest, where = copies["model_repository"]
        target = dest if dest.startswith("/") else f"{where}/{dest}"
        if target.rstrip("/") != "/opt/imem/model_repository":
            problems.add(f"docker/{name} copies model_repository to {target}, expected /opt/imem/model_repository")
        for word, args in instructions:
            if word == "RUN" and re.search(r"(rm|mv|sed|cp|tee|>)\s[^&|;]*model_repository", args):
                problems.add(f"docker/{name} changes model_repository in a RUN: {args[:100]}")
        for package_dir in ("python_backends", "client", "cli", "gateway", "serve", "benchmarks"):
            if package_dir not in copies:
                problems.add(f"docker/{name} does not COPY {package_dir} (a package pyproject.toml installs)")
        ignore = (DOCKER / f"{name}.dockerignore").read_text().split()
        for needed in ("model_repository", "python_backends", "client", "cli", "gateway", "serve", "benchmarks",
                       "pyproject.toml", "requirements"):
            if f"!{needed}" not in ignore:
                problems.add(f"docker/{name}.dockerignore leaves {needed} out of the build context")
        ok(f"docker/{name}: COPY model_repository -> {target} (unchanged: no RUN edits it), packages copied")

    gpu = (DOCKER / "Dockerfile").read_text()
    loop = re.search(r"for name in ([a-z ]+); do\s*\\?\s*ln -sfn \"/opt/imem/python_backends/\$\{name\}\" "
                     r"\"/opt/tritonserver/backends/\$\{name\}\"", gpu)
    linked = set(loop.group(1).split()) if loop else set()
    if linked != ours:
        problems.add(f"docker/Dockerfile links {sorted(linked)} into /opt/tritonserver/backends, the launcher "
                     f"(OUR_BACKENDS) {sorted(ours)}")
    else:
        ok(f"docker/Dockerfile: python_backends/<name> -> /opt/tritonserver/backends/<name>/model.py for "
           f"{', '.join(sorted(linked))} (beside the python backend, as the launcher lays them out)")

    # The GPU image's tritonserver flags against TritonServer.command().
    expected = triton.TritonServer(admin_key="ADMINKEY").flags(Path("/opt/tritonserver/backends"))
    script = (DOCKER / "entrypoint.sh").read_text()
    call = re.search(r"exec tritonserver \\\n(.*?)\n\s*\"\$@\"", script, re.S)
    if not call:
        problems.add("docker/entrypoint.sh: no `exec tritonserver ...` call found")
        problems.finish()  # the flag comparisons below need that call
    ours_flags = {}
    for line in call.group(1).splitlines():
        line = line.strip().rstrip("\\").strip()
        if line.startswith("--"):
            flag, _, value = line.partition("=")
            ours_flags[flag] = value.strip('"')
    theirs = {}
    for arg in expected:
        flag, _, value = arg.partition("=")
        theirs[flag] = value
    if set(ours_flags) != set(theirs):
        problems.add(f"entrypoint.sh flags differ from the launcher's: missing "
                     f"{sorted(set(theirs) - set(ours_flags))}, extra {sorted(set(ours_flags) - set(theirs))}")
    restricted = ",".join(triton.RESTRICTED_APIS)
    exit_timeout = str(triton.TritonServer().exit_timeout)
    if f"RESTRICTED_APIS=\"{restricted}\"" not in script:
        problems.add(f"entrypoint.sh restricts other APIs than the launcher ({restricted})")
    if f"EXIT_TIMEOUT={exit_timeout}" not in script:
        problems.add(f"entrypoint.sh exit timeout differs from the launcher's ({exit_timeout} s)")
    for flag in ("--log-verbose", "--disable-auto-complete-config"):
        if ours_flags.get(flag) != theirs.get(flag):
            problems.add(f"entrypoint.sh {flag}={ours_flags.get(flag)}, launcher {theirs.get(flag)}")
    for flag in ("--http-restricted-api", "--grpc-restricted-protocol"):
        if not theirs[flag].startswith(f"{restricted}:imem-admin="):
            problems.add(f"unexpected launcher value for {flag}: {theirs[flag]}")
        if ours_flags.get(flag) != "${RESTRICTED_APIS}:imem-admin=${admin}":
            problems.add(f"entrypoint.sh {flag} is not <restricted APIs>:imem-admin=<IMEM_ADMIN_KEY>")
    ok(f"entrypoint.sh starts tritonserver with the launcher's flags: {' '.join(sorted(theirs))}")
    ok(f"restricted APIs {restricted} behind the imem-admin header; exit timeout {exit_timeout} s")

    cpu = dockerfile_instructions(DOCKER / "Dockerfile.cpu")
    entry = [args for word, args in cpu if word in ("ENTRYPOINT", "CMD")]
    argv = [a for part in entry for a in json.loads(part)]
    if "imem" not in argv or "serve" not in argv or "--gateway" not in argv:
        problems.add(f"docker/Dockerfile.cpu does not run `imem serve --gateway` (runs {argv})")
    else:
        ok(f"docker/Dockerfile.cpu runs {' '.join(argv)} (the launcher itself)")
    for name in DOCKERFILES:
        instructions = dockerfile_instructions(DOCKER / name)
        users = [args for word, args in instructions if word == "USER"]
        if not users or users[-1].split(":")[0] in ("0", "root"):
            problems.add(f"docker/{name} does not end as a non-root user")
        if not any(word == "HEALTHCHECK" and "/v2/health/ready" in (DOCKER / "healthcheck.py").read_text()
                   for word, _ in instructions):
            problems.add(f"docker/{name} has no HEALTHCHECK on /v2/health/ready")
        text = (DOCKER / name).read_text()
        if re.search(r"^\s*(ENV|ARG)\s+[^#\n]*(ADMIN_KEY|API_KEY|PASSWORD|SECRET)", text, re.M):
            problems.add(f"docker/{name} sets a secret in ENV/ARG")
        if re.search(r"^\s*COPY\s+[^\n]*\b(models|\.build|data)\b", text, re.M):
            problems.add(f"docker/{name} copies weights or data into the image")
        ok(f"docker/{name}: USER {users[-1] if users else '?'}, HEALTHCHECK, no secrets in ENV/ARG, no weights copied")
    problems.finish()


def check_makefile_parity() -> None:
    """Dockerfile.cpu builds the environment as `make serve` does: every step of the Makefile's venv and
    model recipes is in its RUN instructions."""
    problems = Problems()
    makefile = (ROOT / "Makefile").read_text()
    recipes = {}
    for target in ("$(VENV)/.installed", "model"):
        match = re.search(rf"^{re.escape(target)}:.*?\n((?:\t.*\n)+)", makefile, re.M)
        if not match:
            problems.add(f"Makefile: no recipe for {target}")
            continue
        recipes[target] = [line.strip() for line in match.group(1).splitlines()]
    runs = " && ".join(args for word, args in dockerfile_instructions(DOCKER / "Dockerfile.cpu") if word == "RUN")
    runs = re.sub(r'--extra-index-url "\$\{TORCH_INDEX_URL\}" ', "", runs)
    runs = re.sub(r"\s+", " ", runs)
    replacements = {"$(PIP)": "pip", "$(PY)": "python", "$(SYSTEM_PY)": "/usr/bin/python3.11", "$(VENV)": ".venv"}
    checked = []
    for target, lines in recipes.items():
        for line in lines:
            if line.startswith("@") or line.startswith("touch") or not line:
                continue
            command = line
            for old, new in replacements.items():
                command = command.replace(old, new)
            command = re.sub(r"\s--quiet\b", "", command)
            command = re.sub(r"\s+", " ", command).strip()
            if command not in runs:
                problems.add(f"Makefile step `{line}` ({target}) has no counterpart in docker/Dockerfile.cpu "
                             f"(looked for `{command}`)")
            else:
                checked.append(command)
    apt = re.search(r"apt-get install -y ([^)]*)\)", makefile)
    if apt:
        for package in apt.group(1).split():
            if package not in runs:
                problems.add(f"docker/Dockerfile.cpu does not install Debian's {package} (the Makefile does)")
    for line in checked:
        print(f"    {line}")
    ok(f"docker/Dockerfile.cpu repeats the Makefile's {len(checked)} venv/model steps")
    problems.finish()


def check_settings() -> None:
    """docker/production.env and the chart's ConfigMaps set only documented variables, with values their
    settings module can parse; prints what production changes from the dev defaults."""
    problems = Problems()
    documented = documented_variables()
    ok(f"{len(documented)} variables documented in python_backends/imem/config.py and gateway settings")
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    sources = {
        "docker/production.env": env_file(DOCKER / "production.env", problems),
        "chart config:": {k: str(v) for k, v in values["config"].items()},
        "chart gateway.config:": {k: str(v) for k, v in values["gateway"]["config"].items()},
    }
    compose = yaml.safe_load((DOCKER / "compose.yaml").read_text())
    for name, service in compose["services"].items():
        environment = service.get("environment") or {}
        if isinstance(environment, list):
            environment = dict(item.partition("=")[::2] for item in environment)
        if name in ("triton", "gateway"):
            sources[f"compose {name} environment"] = {k: str(v) for k, v in environment.items()}
    # Secrets and ports are not settings of the models: the compose file may also pass what the launcher
    # reads (IMEM_ADMIN_KEY in serve/imem_serve/launcher.py, ports and IMEM_HOST in the CLI).
    launcher_vars = documented_variables(SETTINGS_MODULES + LAUNCHER_MODULES)
    for source, settings in sources.items():
        allowed = launcher_vars if source.startswith("compose") else documented
        for key, value in settings.items():
            if key not in allowed:
                problems.add(f"{source}: {key} is not a variable of config.py or gateway/imem_gateway/settings.py")
                continue
            if "${" in value:
                continue
            kind = allowed[key]
            try:
                {"int": int, "float": float, "str": str}[kind](value)
            except ValueError:
                problems.add(f"{source}: {key}={value!r} is not a valid {kind}")
        ok(f"{source}: {len(settings)} keys, all documented: {', '.join(sorted(settings))}")
    # The production values, loaded by the real settings module.
    for source in ("docker/production.env", "chart config:"):
        env = dict(os.environ)
        env.update({k: v for k, v in sources[source].items() if v})
        code = ("import json, sys; sys.path.insert(0, sys.argv[1]); import imem.config as c; "
                "print(json.dumps(c.load().engine.engine_args()))")
        import subprocess

        result = subprocess.run([sys.executable, "-c", code, str(ROOT / "python_backends")], env=env,
                                capture_output=True, text=True)
        if result.returncode:
            problems.add(f"{source}: imem.config.load() fails: {result.stderr.strip().splitlines()[-1:]}")
        else:
            ok(f"{source}: imem.config.load() accepts it; vLLM engine args {result.stdout.strip()}")
    prod, chart = sources["docker/production.env"], sources["chart config:"]
    for key in sorted(set(prod) & set(chart)):
        if prod[key] != chart[key] and key != "QDRANT_URL":
            problems.add(f"production.env and the chart disagree on {key}: {prod[key]!r} vs {chart[key]!r}")
    ok("production.env and the chart's config agree on every key both set (QDRANT_URL aside)")
    problems.finish()


def check_compose() -> None:
    """docker/compose.yaml: every service has a health check and a restart policy, every file it names
    exists, images are pinned, the Qdrant API key reaches both Qdrant and Triton, Triton's ports stay local."""
    problems = Problems()
    path = DOCKER / "compose.yaml"
    compose = yaml.safe_load(path.read_text())
    services = compose["services"]
    for name, service in services.items():
        if "healthcheck" not in service:
            problems.add(f"compose service {name} has no healthcheck")
        if service.get("restart") not in ("always", "unless-stopped", "on-failure"):
            problems.add(f"compose service {name} has no restart policy")
        image = service.get("image", "")
        if "build" in service:
            build = service["build"]
            context = (DOCKER / build.get("context", ".")).resolve()
            if not (context / build.get("dockerfile", "Dockerfile")).is_file():
                problems.add(f"compose service {name}: {build} does not name an existing Dockerfile")
        elif ":" not in image or image.endswith(":latest"):
            problems.add(f"compose service {name}: image {image!r} is not pinned to a version")
        for volume in service.get("volumes", []):
            source = volume_parts(volume, problems)[0]
            if source.startswith((".", "/")):
                if not (DOCKER / source).exists():
                    problems.add(f"compose service {name}: {source} does not exist")
            elif source.startswith("${"):
                if ":?" not in source:
                    problems.add(f"compose service {name}: {source} has no required-variable check")
            elif source not in (compose.get("volumes") or {}):
                problems.add(f"compose service {name}: volume {source} is not declared")
        env_files = service.get("env_file", [])
        for file in [env_files] if isinstance(env_files, str) else env_files:
            if not (DOCKER / file).is_file():
                problems.add(f"compose service {name}: env_file {file} does not exist")
        ok(f"{name}: {image or 'built'}; healthcheck, restart={service.get('restart')}")
    triton, qdrant, gateway = services["triton"], services["qdrant"], services["gateway"]
    if triton["environment"].get("QDRANT_URL") != "http://qdrant:6333":
        problems.add("compose triton: QDRANT_URL is not http://qdrant:6333")
    if not str(triton["environment"].get("QDRANT_API_KEY", "")).startswith("${QDRANT_API_KEY"):
        problems.add("compose triton: QDRANT_API_KEY does not come from $QDRANT_API_KEY")
    if not str(qdrant["environment"].get("QDRANT__SERVICE__API_KEY", "")).startswith("${QDRANT_API_KEY"):
        problems.add("compose qdrant: QDRANT__SERVICE__API_KEY does not come from $QDRANT_API_KEY")
    if not str(triton["environment"].get("IMEM_ADMIN_KEY", "")).startswith("${IMEM_ADMIN_KEY:?"):
        problems.add("compose triton: IMEM_ADMIN_KEY must be required from the environment")
    if "grpc://triton:8001" not in " ".join(gateway.get("command", [])):
        problems.add("compose gateway does not run `imem gateway --url grpc://triton:8001`")
    for port in triton.get("ports", []):
        if not str(port).startswith("127.0.0.1:"):
            problems.add(f"compose triton publishes {port} beyond localhost (no per-tenant auth on Triton)")
    mounts = [volume_parts(v, problems) for v in triton.get("volumes", [])]
    if not any(target == "/models" and mode == "ro" for _, target, mode in mounts):
        problems.add("compose triton: weights are not mounted read-only at /models")
    if not any(target == "/data" and source in (compose.get("volumes") or {}) for source, target, _ in mounts):
        problems.add("compose triton: no volume at /data")
    for name, secret in (compose.get("secrets") or {}).items():
        if "file" in secret and not secret["file"].startswith("${") and not (DOCKER / secret["file"]).exists():
            problems.add(f"compose secret {name}: {secret['file']} does not exist")
    ok("QDRANT_API_KEY -> qdrant (QDRANT__SERVICE__API_KEY) and triton; QDRANT_URL=http://qdrant:6333; "
       "weights :ro at /models; /data volume; Triton ports on 127.0.0.1")
    prometheus = yaml.safe_load((DOCKER / "prometheus.yml").read_text())
    targets = [t for job in prometheus["scrape_configs"] for sc in job.get("static_configs", []) for t in sc["targets"]]
    if "triton:8002" not in targets:
        problems.add("docker/prometheus.yml does not scrape triton:8002")
    ok(f"prometheus.yml scrapes {targets}")
    problems.finish()


def volume_parts(volume, problems: Problems) -> tuple[str, str, str]:
    """(source, target, mode) of a compose volume, short syntax included (`${VAR:?message}:/path:ro`)."""
    if isinstance(volume, dict):
        return volume.get("source", ""), volume.get("target", ""), "ro" if volume.get("read_only") else "rw"
    match = re.fullmatch(r"(.+?):(/[^:]*)(?::(ro|rw))?", volume)
    if not match:
        problems.add(f"compose volume {volume!r} is not SOURCE:/TARGET[:MODE]")
        return volume, "", ""
    return match.group(1), match.group(2), match.group(3) or "rw"


def dashboard_expressions(dashboard: dict) -> list[str]:
    exprs: list[str] = []

    def walk(panels):
        for panel in panels:
            exprs.extend(t.get("expr", "") for t in panel.get("targets", []))
            walk(panel.get("panels", []))
    walk(dashboard.get("panels", []))
    for variable in dashboard.get("templating", {}).get("list", []):
        query = variable.get("query")
        exprs.append(query.get("query", "") if isinstance(query, dict) else str(query or ""))
    return exprs


def check_grafana() -> None:
    """The provisioned datasource and dashboard: valid, wired together, and showing every metric our models
    export plus Triton's request metrics, and no metric that does not exist."""
    problems = Problems()
    datasources = yaml.safe_load((DOCKER / "grafana/provisioning/datasources/prometheus.yaml").read_text())
    uids = {d["uid"] for d in datasources["datasources"]}
    providers = yaml.safe_load((DOCKER / "grafana/provisioning/dashboards/imem.yaml").read_text())
    paths = {p["options"]["path"] for p in providers["providers"]}
    compose = yaml.safe_load((DOCKER / "compose.yaml").read_text())
    mounts = {target: source for source, target, _ in
              (volume_parts(v, problems) for v in compose["services"]["grafana"]["volumes"])}
    for path in paths:
        if path not in mounts or not (DOCKER / mounts[path]).is_dir():
            problems.add(f"dashboard provider path {path} is not mounted from an existing folder")
    dashboard_path = DOCKER / "grafana/dashboards/imem.json"
    dashboard = json.loads(dashboard_path.read_text())
    used_uids = set()

    def walk(panels):
        for panel in panels:
            ds = panel.get("datasource")
            if isinstance(ds, dict):
                used_uids.add(ds.get("uid"))
            walk(panel.get("panels", []))
    walk(dashboard["panels"])
    if used_uids - uids:
        problems.add(f"dashboard uses datasource uid(s) {sorted(used_uids - uids, key=str)} that are not provisioned")
    exprs = dashboard_expressions(dashboard)
    referenced = set()
    for expr in exprs:
        referenced.update(re.findall(r"\b((?:imem|nv)_[a-z_]+)\b", expr))
    exported = exported_metrics()
    base = {re.sub(r"_(bucket|sum|count)$", "", m) if re.sub(r"_(bucket|sum|count)$", "", m) in exported else m
            for m in referenced}
    unknown = sorted(m for m in base if m not in exported and m not in TRITON_METRICS)
    if unknown:
        problems.add(f"dashboard queries metrics nothing exports: {unknown}")
    missing = sorted((set(exported) | set(TRITON_METRICS)) - base)
    if missing:
        problems.add(f"dashboard does not show: {missing}")
    for name, kind in exported.items():
        if kind == "HISTOGRAM" and not any(f"{name}_bucket" in e or f"{name}_sum" in e for e in exprs):
            problems.add(f"histogram {name} is not read through its _bucket/_sum series")
        if kind == "COUNTER" and not any(re.search(rf"(rate|increase)\({name}\b", e) for e in exprs):
            problems.add(f"counter {name} is shown without rate()/increase()")
    ok(f"datasource uid(s) {sorted(uids)}; provider path(s) {sorted(paths)} mounted from docker/grafana/dashboards")
    ok(f"dashboard: {len(exprs)} queries over {len(exported)} exported imem_* metrics "
       f"({sum(k == 'HISTOGRAM' for k in exported.values())} histograms) and {len(TRITON_METRICS)} Triton metrics")
    copy = CHART / "dashboards" / "imem.json"
    if copy.read_bytes() != dashboard_path.read_bytes():
        problems.add("deploy/helm/imem/dashboards/imem.json differs from docker/grafana/dashboards/imem.json")
    else:
        ok("the chart's dashboard ConfigMap carries the same JSON")
    problems.finish()


# ---- Helm ------------------------------------------------------------------------------------------------
MISSING_DEPENDENCY = "chart directory is missing these dependencies: qdrant"


def _values(files: Sequence[str | Path], extra: dict | None = None) -> dict:
    merged: dict = {}

    def merge(into, new):
        for key, value in new.items():
            if isinstance(value, dict) and isinstance(into.get(key), dict):
                merge(into[key], value)
            else:
                into[key] = value
    for file in files:
        merge(merged, yaml.safe_load(Path(file).read_text()) or {})
    merge(merged, extra or {})
    return merged


def check_helm() -> None:
    """helm lint (strict) and offline rendering (helm template) with Helm's own Go SDK, for the default
    values and every ci/ values file; the chart's refusals; the Qdrant dependency block."""
    problems = Problems()
    import shutil
    import tempfile

    import helm_python as helm

    kube = os.environ.get("KUBE_VERSION", "v1.33.0")
    ok(f"Helm SDK {helm.helm_sdk_version()} (helm-python-sdk, libhelm_c {helm.helm_c_version()}), kube {kube}")

    def lint(path, values, label, allowed=()):
        report = helm.lint(str(path), values, strict=True, kube_version=kube, namespace="imem")
        bad = [m for m in report["messages"] if m["severity"] >= 2 and m["error"] not in allowed]
        for message in bad:
            problems.add(f"helm lint {label}: {message['path']}: {message['error']}")
        notes = [m["error"] for m in report["messages"] if m["severity"] >= 2 and m["error"] in allowed]
        ok(f"helm lint --strict {label}" + (f" (expected: {'; '.join(notes)})" if notes else ""))

    ci_files = sorted((CHART / "ci").glob("*.yaml"))
    lint(CHART, None, "(default values)", allowed=(MISSING_DEPENDENCY,))
    for file in ci_files:
        lint(CHART, _values([file]), f"-f ci/{file.name}", allowed=(MISSING_DEPENDENCY,))
    # The chart without its dependency block: nothing may be excused.
    with tempfile.TemporaryDirectory() as tmp:
        stripped = Path(tmp) / "imem"
        shutil.copytree(CHART, stripped)
        chart_yaml = yaml.safe_load((stripped / "Chart.yaml").read_text())
        chart_yaml.pop("dependencies", None)
        (stripped / "Chart.yaml").write_text(yaml.safe_dump(chart_yaml, sort_keys=False))
        lint(stripped, {"qdrant": {"enabled": False}}, "(dependency block removed, qdrant.enabled=false)")

    chart = helm.Chart.load(str(CHART))
    rendered_dir = OUT / "rendered"
    shutil.rmtree(rendered_dir, ignore_errors=True)
    rendered_dir.mkdir(parents=True)
    cases = {"default-qdrant-disabled": _values([], {"qdrant": {"enabled": False}})}
    for file in ci_files:
        values = _values([file])
        if values.get("qdrant", {}).get("enabled", True):
            # The Qdrant chart is not in charts/ here: our templates render, Qdrant's own do not.
            cases[f"{file.stem}-without-qdrant-subchart"] = values
        else:
            cases[file.stem] = values
    for case, values in cases.items():
        try:
            manifests = chart.render(values, name="imem", namespace="imem", is_install=True)
        except Exception as error:
            problems.add(f"helm template ({case}) failed: {error}")
            continue
        docs = []
        for template, text in sorted(manifests.items()):
            if template.endswith("NOTES.txt") or not text.strip():
                continue
            for doc in yaml.safe_load_all(text):
                if doc:
                    docs.append(doc)
        (rendered_dir / f"{case}.yaml").write_text(yaml.safe_dump_all(docs, sort_keys=False))
        kinds = sorted(f"{d['kind']}/{d['metadata']['name']}" for d in docs)
        ok(f"helm template ({case}): {len(docs)} objects: {', '.join(kinds)}")
        _check_rendered(case, values, docs, problems)

    refusals: dict[str, tuple[dict, str]] = {
        "replicas>1 on the embedded store": ({"qdrant": {"enabled": False}, "triton": {"replicas": 2}},
                                             "needs a Qdrant server"),
        "qdrant.enabled and QDRANT_URL": ({"config": {"QDRANT_URL": "http://elsewhere:6333"}}, "both set"),
        "Qdrant without an API key": ({"qdrant": {"apiKey": False}}, "qdrant.apiKey must be set"),
        "weights from nowhere": ({"qdrant": {"enabled": False}, "triton": {"weights": {"existingClaim": ""}}},
                                 "model weights"),
        "admin key with a comma": ({"qdrant": {"enabled": False}, "secrets": {"adminKey": "a,b"}}, "adminKey"),
    }
    for label, (values, expected) in refusals.items():
        try:
            chart.render(values, name="imem", namespace="imem", is_install=True)
            problems.add(f"the chart renders {label} instead of refusing it")
        except Exception as error:
            if expected not in str(error):
                problems.add(f"the chart refuses {label}, but with: {error}")
            else:
                ok(f"refuses {label}: ...{expected}...")
    _check_dependency(problems)
    problems.finish()


def _find(docs, kind, suffix):
    return next((d for d in docs if d["kind"] == kind and d["metadata"]["name"].endswith(suffix)), None)


def _check_rendered(case: str, values: dict, docs: list[dict], problems: Problems) -> None:
    deployment = _find(docs, "Deployment", "-triton")
    if not deployment:
        problems.add(f"{case}: no Triton Deployment")
        return
    pod = deployment["spec"]["template"]["spec"]
    container = pod["containers"][0]
    limits = container.get("resources", {}).get("limits", {})
    if "nvidia.com/gpu" not in limits:
        problems.add(f"{case}: Triton has no nvidia.com/gpu limit")
    if not pod.get("nodeSelector") or not pod.get("tolerations"):
        problems.add(f"{case}: Triton has no nodeSelector/tolerations for GPU nodes")
    probes = {p: container.get(p, {}).get("httpGet", {}).get("path") for p in
              ("startupProbe", "readinessProbe", "livenessProbe")}
    if probes != {"startupProbe": "/v2/health/ready", "readinessProbe": "/v2/health/ready",
                  "livenessProbe": "/v2/health/live"}:
        problems.add(f"{case}: Triton probes are {probes}")
    startup = container["startupProbe"]
    if startup["periodSeconds"] * startup["failureThreshold"] < 600:
        problems.add(f"{case}: the startup probe allows less than 10 minutes for vLLM to load")
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    if volumes.get("shm", {}).get("emptyDir", {}).get("medium") != "Memory" or "/dev/shm" not in mounts:
        problems.add(f"{case}: no memory-backed /dev/shm")
    if not mounts.get("/models", {}).get("readOnly"):
        problems.add(f"{case}: /models is not mounted read-only")
    config = _find(docs, "ConfigMap", "-config")
    qdrant_url = (config or {}).get("data", {}).get("QDRANT_URL", "")
    replicas = deployment["spec"]["replicas"]
    if replicas > 1 and not qdrant_url:
        problems.add(f"{case}: {replicas} replicas without QDRANT_URL")
    if not qdrant_url and deployment["spec"]["strategy"]["type"] != "Recreate":
        problems.add(f"{case}: the embedded store without the Recreate strategy")
    env = {e["name"] for e in container.get("env", [])}
    if qdrant_url and "QDRANT_API_KEY" not in env:
        problems.add(f"{case}: Triton gets QDRANT_URL but no QDRANT_API_KEY")
    service = _find(docs, "Service", "-triton")
    ports = sorted(p["port"] for p in (service or {}).get("spec", {}).get("ports", []))
    if ports != [8000, 8001, 8002]:
        problems.add(f"{case}: the Triton Service exposes {ports}")
    metrics = values.get("metrics", {})
    if metrics.get("serviceMonitor", {}).get("enabled") and not _find(docs, "ServiceMonitor", "-triton"):
        problems.add(f"{case}: serviceMonitor.enabled but no ServiceMonitor")
    annotations = deployment["spec"]["template"]["metadata"].get("annotations", {})
    if metrics.get("podAnnotations", True) and annotations.get("prometheus.io/port") != "8002":
        problems.add(f"{case}: no Prometheus scrape annotations for port 8002")
    if values.get("gateway", {}).get("enabled", True):
        gateway = _find(docs, "Deployment", "-gateway")
        args = gateway["spec"]["template"]["spec"]["containers"][0]["args"] if gateway else []
        if args[:2] != ["gateway", "--url"] or not args[2].endswith(":8001"):
            problems.add(f"{case}: the gateway does not run `imem gateway --url grpc://<triton>:8001` ({args})")
        if not _find(docs, "Service", "-gateway"):
            problems.add(f"{case}: no gateway Service")
    for doc in docs:
        if doc["kind"] == "Secret":
            continue
        text = json.dumps(doc)
        if re.search(r'"name": "(IMEM_ADMIN_KEY|QDRANT_API_KEY)", "value"', text):
            problems.add(f"{case}: {doc['kind']}/{doc['metadata']['name']} carries a secret as a plain value")
    ok(f"{case}: GPU limit + nodeSelector/tolerations, probes ready/ready/live "
       f"(startup {startup['periodSeconds'] * startup['failureThreshold'] // 60} min), /dev/shm, /models ro, "
       f"{replicas} replica(s), strategy {deployment['spec']['strategy']['type']}, "
       f"memory {qdrant_url or 'embedded store'}")


def _check_dependency(problems: Problems) -> None:
    """The Qdrant dependency, checked on its own (it cannot be downloaded here)."""
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    deps = chart.get("dependencies", [])
    qdrant = next((d for d in deps if d.get("name") == "qdrant"), None)
    if not qdrant:
        problems.add("Chart.yaml has no qdrant dependency")
        return
    if qdrant.get("repository") != "https://qdrant.github.io/qdrant-helm":
        problems.add(f"qdrant dependency repository is {qdrant.get('repository')}")
    if not re.fullmatch(r"\d+\.\d+\.\d+", str(qdrant.get("version", ""))):
        problems.add(f"qdrant dependency version {qdrant.get('version')!r} is not pinned to one release")
    if qdrant.get("condition") != "qdrant.enabled":
        problems.add("qdrant dependency has no `condition: qdrant.enabled`")
    values = yaml.safe_load((CHART / "values.yaml").read_text())["qdrant"]
    cluster = values.get("config", {}).get("cluster", {}).get("enabled")
    replicas = values.get("replicaCount", 1)
    factor = values.get("config", {}).get("storage", {}).get("collection", {}).get("replication_factor", 1)
    if not cluster:
        problems.add("qdrant.config.cluster.enabled is not true (distributed mode)")
    if replicas < 3:
        problems.add(f"qdrant.replicaCount is {replicas}, expected 3")
    if not 1 < factor <= replicas:
        problems.add(f"qdrant replication_factor {factor} must be in 2..replicaCount ({replicas})")
    if not values.get("apiKey"):
        problems.add("qdrant.apiKey is not set")
    lock = CHART / "Chart.lock"
    ok(f"dependency qdrant {qdrant['version']} from {qdrant['repository']} if qdrant.enabled; distributed mode, "
       f"{replicas} peers, replication_factor {factor}, apiKey set"
       + ("" if lock.exists() else " (no Chart.lock yet: `helm dependency update` writes it)"))


def check_kubernetes_objects(directory: str) -> None:
    """What kubernetes-validate cannot know (CRDs): the ServiceMonitor's shape."""
    problems = Problems()
    for path in sorted(Path(directory).glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc and doc["kind"] == "ServiceMonitor":
                spec = doc.get("spec", {})
                endpoint = (spec.get("endpoints") or [{}])[0]
                if doc.get("apiVersion") != "monitoring.coreos.com/v1" or endpoint.get("port") != "metrics" \
                        or not spec.get("selector", {}).get("matchLabels"):
                    problems.add(f"{path.name}: ServiceMonitor is malformed: {spec}")
                else:
                    ok(f"{path.name}: ServiceMonitor monitoring.coreos.com/v1 -> port metrics {endpoint.get('path')}")
    problems.finish()


def split_for_validation(directory: str, out: str) -> None:
    """Writes the rendered objects kubernetes-validate knows (built-in kinds) to OUT, one file per case."""
    Path(out).mkdir(parents=True, exist_ok=True)
    for path in sorted(Path(directory).glob("*.yaml")):
        docs = [d for d in yaml.safe_load_all(path.read_text()) if d and "monitoring.coreos.com" not in d["apiVersion"]]
        (Path(out) / path.name).write_text(yaml.safe_dump_all(docs, sort_keys=False))


if __name__ == "__main__":
    name, *rest = sys.argv[1:]
    {
        "images": check_images,
        "makefile": check_makefile_parity,
        "settings": check_settings,
        "compose": check_compose,
        "grafana": check_grafana,
        "helm": check_helm,
        "servicemonitor": lambda: check_kubernetes_objects(*rest),
        "split": lambda: split_for_validation(*rest),
    }[name]()
