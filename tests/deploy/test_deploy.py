"""The deployment artefacts in deploy/, each checked against the code it deploys.

Static checks read each artefact and compare it with the source of truth: the environment
variables ``Settings.from_env`` reads, the routes ``create_app`` serves, the module the image
runs. Then the artefacts meet real processes: a server booted with each artefact's settings
passes that artefact's probes, a SIGTERM during a long rollout drains it as the Kubernetes
grace period promises, and a real nginx with the shipped config balances rollouts over two
real servers. No Docker engine and no systemd here, so the image is never built and the unit
is never started; ``systemd-analyze verify`` checks the unit when it is installed.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, cast

import httpx
import pytest
import yaml  # a dependency of transformers and huggingface_hub
from sanic.config import DEFAULT_CONFIG as SANIC_DEFAULTS

from rollout_server.app import create_app
from rollout_server.settings import Settings
from tests.conftest import Proc, free_port

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
DOCKERFILE = DEPLOY / "Dockerfile"
MANIFEST = DEPLOY / "kubernetes" / "rollout-server.yaml"
UNIT = DEPLOY / "systemd" / "rollout-server.service"
NGINX = DEPLOY / "nginx" / "rollout-servers.conf"

# Read by the libraries underneath, not by Settings. SANIC_* names are checked separately
# against Sanic's own configuration keys.
PLATFORM_VARS = frozenset(
    {"HF_HOME", "HF_HUB_OFFLINE", "HF_TOKEN", "PATH", "PYTHONUNBUFFERED", "PYTHONDONTWRITEBYTECODE"}
)
# Paths and addresses of the target machine; the test processes get their own.
MACHINE_LOCAL = frozenset({"ROLLOUT_SERVER_HOST", "ROLLOUT_SERVER_PORT", "TOKENIZE_POOL_SOCKET", "HF_HOME"})
QWEN3 = "Qwen/Qwen3-8B"


def settings_names() -> frozenset[str]:
    """Every variable ``Settings.from_env`` reads, taken from its source: ``get("NAME", ...)``."""
    source = (ROOT / "rollout_server" / "settings.py").read_text()
    names = frozenset(re.findall(r'\bget\(\s*"([A-Z][A-Z0-9_]*)"', source))
    assert len(names) >= 19, f"the regex no longer finds the settings: {sorted(names)}"
    return names


def unknown_names(names: set[str]) -> set[str]:
    known = settings_names() | PLATFORM_VARS
    return {n for n in names if n not in known and not (n.startswith("SANIC_") and n[6:] in SANIC_DEFAULTS)}


def served_get_paths() -> set[str]:
    app = create_app(Settings(), name=f"deploy-routes-{uuid.uuid4().hex[:8]}")
    return {route.uri for route in app.router.routes if "GET" in route.methods}


def app_timeouts(env: dict[str, str]) -> tuple[float, float]:
    """With these settings: the longest a rollout response can take (Sanic's RESPONSE_TIMEOUT)
    and how long shutdown waits for rollouts in flight (GRACEFUL_SHUTDOWN_TIMEOUT), as the app sets them."""
    app = create_app(Settings.from_env(env), name=f"deploy-timeout-{uuid.uuid4().hex[:8]}")
    return float(app.config.RESPONSE_TIMEOUT), float(app.config.GRACEFUL_SHUTDOWN_TIMEOUT)


def settings_env(env: dict[str, str]) -> dict[str, str]:
    """What a test server takes from an artefact: its settings and Sanic knobs, not its paths."""
    return {
        k: v
        for k, v in env.items()
        if k not in MACHINE_LOCAL and (k in settings_names() or k.startswith("SANIC_"))
    }


def dockerfile_stages() -> list[list[tuple[str, str]]]:
    """Instructions as (KEYWORD, arguments), continuation lines joined, grouped by FROM."""
    logical: list[str] = []
    pending = ""
    for line in DOCKERFILE.read_text().splitlines():
        if not pending and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        logical.append(pending + line.strip())
        pending = ""
    stages: list[list[tuple[str, str]]] = []
    for text in logical:
        keyword, _, args = text.partition(" ")
        if keyword.upper() == "FROM":
            stages.append([])
        if stages:
            stages[-1].append((keyword.upper(), " ".join(args.split())))
    return stages


def dockerfile_env(stage: list[tuple[str, str]]) -> dict[str, str]:
    pairs = [pair for keyword, args in stage if keyword == "ENV" for pair in shlex.split(args)]
    return assignments(pairs)


def assignments(pairs: list[str]) -> dict[str, str]:
    """``NAME=value`` items, as ENV and Environment= write them, into a mapping."""
    env: dict[str, str] = {}
    for pair in pairs:
        name, _, value = pair.partition("=")
        env[name] = value
    return env


def test_dockerfile_installs_the_locked_project_and_runs_the_server_as_non_root() -> None:
    stages = dockerfile_stages()
    everything = [item for stage in stages for item in stage]
    runtime = stages[-1]
    assert stages[0][0][1].split()[0] in ("python:3.11-slim", "${PYTHON_IMAGE}")
    assert "ARG PYTHON_IMAGE=python:3.11-slim" in DOCKERFILE.read_text()

    copies = [args.split() for keyword, args in everything if keyword == "COPY"]
    assert any({"pyproject.toml", "uv.lock"} <= set(c) for c in copies), (
        "pyproject.toml and uv.lock are not copied"
    )
    package_copy = max(
        i
        for i, (k, a) in enumerate(everything)
        if k == "COPY" and a.split()[0].rstrip("/") == "tokenize_pool"
    )
    assert any(
        k == "COPY" and a.split()[0].rstrip("/") == "rollout_server" for k, a in everything[:package_copy]
    )
    syncs_after = [a for k, a in everything[package_copy:] if k == "RUN" and "uv sync --frozen" in a]
    assert syncs_after and "--no-dev" in syncs_after[-1], (
        "the project is not installed after its packages are copied"
    )

    env = dockerfile_env(runtime)
    assert env["HF_HOME"] == "/data/hf"
    assert env["PYTHONUNBUFFERED"] == "1"
    assert env["PATH"].startswith(dockerfile_env(stages[0])["UV_PROJECT_ENVIRONMENT"] + "/bin:")
    assert any(k == "COPY" and a.startswith("--from=build /app/.venv ") for k, a in runtime)
    assert not unknown_names(set(env) - {k for k in env if k.startswith("UV_")})
    settings = Settings.from_env(env)
    assert settings.port == 9000
    assert ("EXPOSE", str(settings.port)) in runtime

    users = [args for keyword, args in runtime if keyword == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0"), "the server would run as root"
    cmd = json.loads(next(args for keyword, args in runtime if keyword == "CMD"))
    assert cmd[:2] == ["python", "-m"] and importlib.util.find_spec(cmd[2]) is not None
    assert cmd[2] == "rollout_server.server"


def test_the_image_and_the_manifests_size_the_pool_alike() -> None:
    """TOKENIZE_WORKERS is the same in the image, the Kubernetes Deployment and the systemd unit
    (all sized for 4 CPUs), and the build context leaves out what the image does not need."""
    image = dockerfile_env(dockerfile_stages()[-1])["TOKENIZE_WORKERS"]
    assert image == container_env(server_container())["TOKENIZE_WORKERS"] == unit_env()["TOKENIZE_WORKERS"]
    ignored = {line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()}
    assert {".git", ".venv", "tests"} <= ignored
    assert not {"README.md", "pyproject.toml", "uv.lock", "rollout_server", "tokenize_pool"} & ignored


def healthcheck_argv() -> list[str]:
    args = next(a for k, a in dockerfile_stages()[-1] if k == "HEALTHCHECK")
    argv: list[str] = json.loads(args[args.index("CMD") + 3 :])
    return [sys.executable if argv[0] == "python" else argv[0], *argv[1:]]


def test_dockerfile_healthcheck_passes_on_a_live_server_and_fails_on_a_dead_port(
    start_server: Callable[..., Proc],
) -> None:
    paths = set(re.findall(r"'(/[a-z]+)'", " ".join(healthcheck_argv())))
    assert paths and paths <= served_get_paths(), f"HEALTHCHECK calls {paths}, not a route the app serves"

    server = start_server(**settings_env(dockerfile_env(dockerfile_stages()[-1])))
    try:
        port = server.url.rsplit(":", 1)[1]
        live = subprocess.run(
            healthcheck_argv(),
            env={**os.environ, "ROLLOUT_SERVER_PORT": port},
            capture_output=True,
            timeout=20,
        )
        assert live.returncode == 0, live.stderr.decode()
        dead_env = {**os.environ, "ROLLOUT_SERVER_PORT": str(free_port())}
        dead = subprocess.run(healthcheck_argv(), env=dead_env, capture_output=True, timeout=20)
        assert dead.returncode == 1, "Docker reads exit code 1 as unhealthy"
    finally:
        server.stop()


def manifest(kind: str) -> dict[str, Any]:
    docs = [d for d in yaml.safe_load_all(MANIFEST.read_text()) if d]
    return next(d for d in docs if d["kind"] == kind)


def pod_spec() -> dict[str, Any]:
    spec: dict[str, Any] = manifest("Deployment")["spec"]["template"]["spec"]
    return spec


def server_container() -> dict[str, Any]:
    return next(c for c in pod_spec()["containers"] if c["name"] == "rollout-server")


def container_env(container: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e["value"] for e in container.get("env", []) if "value" in e}


def resolve_port(container: dict[str, Any], port: int | str) -> int:
    if isinstance(port, int):
        return port
    return int(next(p["containerPort"] for p in container["ports"] if p.get("name") == port))


def test_kubernetes_env_probes_and_ports_match_the_server() -> None:
    spec = pod_spec()
    container = server_container()
    every = spec.get("initContainers", []) + spec["containers"]
    names = {e["name"] for c in every for e in c.get("env", [])}
    assert not unknown_names(names), f"variables the server does not read: {sorted(unknown_names(names))}"

    env = container_env(container)
    settings = Settings.from_env(env)
    assert settings.tokenizer_trust_remote_code is False
    assert {
        "TOKENIZER_CACHE_SIZE",
        "HTTP_CLIENT_TIMEOUT",
        "TOKENIZE_WORKERS",
        "MAX_CONCURRENT_ROLLOUTS",
    } <= set(env)
    assert settings.tokenize_workers < float(container["resources"]["limits"]["cpu"]), (
        "leave a core for Sanic"
    )
    assert resolve_port(container, "http") == settings.port

    routes = served_get_paths()
    probes = {
        name: container[name]["httpGet"] for name in ("startupProbe", "livenessProbe", "readinessProbe")
    }
    assert probes["livenessProbe"]["path"] == "/health"
    assert probes["readinessProbe"]["path"] == "/ready"
    for name, probe in probes.items():
        assert probe["path"] in routes, f"{name} probes {probe['path']}, which the app does not serve"
        assert resolve_port(container, probe["port"]) == settings.port

    notes = manifest("Deployment")["spec"]["template"]["metadata"]["annotations"]
    assert notes["prometheus.io/scrape"] == "true" and settings.metrics_enabled
    assert notes["prometheus.io/path"] in routes
    assert int(notes["prometheus.io/port"]) == settings.port

    service = manifest("Service")["spec"]
    labels = manifest("Deployment")["spec"]["template"]["metadata"]["labels"]
    assert service["selector"].items() <= labels.items()
    assert all(resolve_port(container, p["targetPort"]) == settings.port for p in service["ports"])


def test_kubernetes_pod_runs_as_the_image_user_with_the_image_cache() -> None:
    spec = pod_spec()
    image_env = dockerfile_env(dockerfile_stages()[-1])
    image_uid = next(a for k, a in dockerfile_stages()[-1] if k == "USER").split(":")[0]
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert str(spec["securityContext"]["runAsUser"]) == image_uid
    volumes = {v["name"] for v in spec["volumes"]}
    for container in spec.get("initContainers", []) + spec["containers"]:
        assert container["securityContext"]["allowPrivilegeEscalation"] is False
        assert container["image"] == server_container()["image"]
        hf_home = container_env(container)["HF_HOME"]
        assert hf_home == image_env["HF_HOME"]
        mount = next(m for m in container["volumeMounts"] if m["mountPath"] == hf_home)
        assert mount["name"] in volumes
    socket_dir = str(Path(Settings.from_env(container_env(server_container())).pool_socket).parent)
    assert any(m["mountPath"] == socket_dir for m in server_container()["volumeMounts"]), (
        "socket dir is read-only"
    )


def test_kubernetes_settings_boot_a_server_that_passes_every_probe(start_server: Callable[..., Proc]) -> None:
    container = server_container()
    server = start_server(**settings_env(container_env(container)))
    try:
        for name in ("startupProbe", "livenessProbe", "readinessProbe"):
            response = httpx.get(
                server.url + container[name]["httpGet"]["path"], timeout=container[name]["timeoutSeconds"]
            )
            assert response.status_code == 200, f"{name}: {response.status_code} {response.text}"
        notes = manifest("Deployment")["spec"]["template"]["metadata"]["annotations"]
        scraped = httpx.get(server.url + notes["prometheus.io/path"], timeout=5)
        assert scraped.status_code == 200 and "# TYPE rollout_duration_seconds histogram" in scraped.text
    finally:
        server.stop()


def wait_in_flight(server: Proc) -> None:
    deadline = time.monotonic() + 30
    while httpx.get(server.url + "/health", timeout=5).json()["rollouts"]["in_flight"] < 1:
        assert time.monotonic() < deadline, "the rollout never reached the server"
        time.sleep(0.05)


def test_sigterm_drains_a_rollout_longer_than_sanics_default_grace(
    start_server: Callable[..., Proc], sim: Proc
) -> None:
    """What terminationGracePeriodSeconds promises: a rollout in flight at SIGTERM completes."""
    default_grace = cast(float, SANIC_DEFAULTS["GRACEFUL_SHUTDOWN_TIMEOUT"])
    server = start_server(**settings_env(container_env(server_container())))
    rollout_id = f"deploy-drain-{uuid.uuid4().hex[:8]}"
    # Three trainer calls (two tool turns and the answer), each this slow: past Sanic's default.
    payload = rollout_body(rollout_id, f"{sim.url}/s/sequential/turns=2/latency={default_grace / 2.5:g}")
    outcome: dict[str, Any] = {}

    def post() -> None:
        try:
            outcome["response"] = httpx.post(server.url + "/rollout", json=payload, timeout=120)
        except httpx.HTTPError as exc:
            outcome["error"] = exc

    started = time.monotonic()
    client = threading.Thread(target=post)
    client.start()
    wait_in_flight(server)
    server.popen.send_signal(signal.SIGTERM)
    client.join(120)
    elapsed = time.monotonic() - started
    assert "error" not in outcome, (
        f"the rollout was cut at shutdown: {outcome.get('error')!r}\n{server.log_text()[-2000:]}"
    )
    result = outcome["response"].json()
    assert result["status"] == "COMPLETED", f"{result}\n{server.log_text()[-2000:]}"
    assert elapsed > default_grace, "the rollout was too short to tell a drain from Sanic's default"
    assert server.popen.wait(30) == 0
    assert httpx.get(f"{sim.url}/sim/rollouts/{rollout_id}", timeout=10).json()["ok"] is True


def unit_entries() -> list[tuple[str, str, str]]:
    """(section, key, value) in file order; systemd keys repeat, so no dict."""
    entries: list[tuple[str, str, str]] = []
    section = ""
    for line in UNIT.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        key, _, value = line.partition("=")
        entries.append((section, key.strip(), value.strip()))
    return entries


def unit_values(key: str) -> list[str]:
    return [value for section, k, value in unit_entries() if section == "Service" and k == key]


def unit_env() -> dict[str, str]:
    return assignments([item for value in unit_values("Environment") for item in shlex.split(value)])


def test_systemd_unit_runs_the_server_module_with_known_settings() -> None:
    argv = shlex.split(unit_values("ExecStart")[0])
    assert argv[0].endswith("/.venv/bin/python") and argv[1:] == ["-m", "rollout_server.server"]
    env = unit_env()
    assert not unknown_names(set(env)), (
        f"variables the server does not read: {sorted(unknown_names(set(env)))}"
    )
    settings = Settings.from_env(env)
    assert settings.tokenizer_trust_remote_code is False
    assert unit_values("User") and unit_values("User")[0] not in ("root", "0")
    assert unit_values("KillMode") == ["mixed"], "the pool host must outlive the Sanic drain"
    assert unit_values("NoNewPrivileges") == ["yes"] and unit_values("ProtectSystem") == ["strict"]

    # Under ProtectSystem=strict only these are writable: RuntimeDirectory, CacheDirectory, /tmp.
    writable = [f"/run/{d}" for d in unit_values("RuntimeDirectory")] + [
        f"/var/cache/{d}" for d in unit_values("CacheDirectory")
    ]
    writable += [p.lstrip("-") for value in unit_values("ReadWritePaths") for p in value.split()]
    if unit_values("PrivateTmp") == ["yes"]:
        writable.append("/tmp")
    for path in (env["HF_HOME"], settings.pool_socket):
        assert any(Path(path).is_relative_to(w) for w in writable), (
            f"{path} is read-only under ProtectSystem=strict"
        )


@pytest.mark.slow  # runs systemd-analyze
def test_systemd_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is not installed")
    # verify checks that ExecStart is executable: point it at this interpreter and checkout.
    text = UNIT.read_text()
    text = re.sub(r"(?m)^ExecStart=\S+", f"ExecStart={sys.executable}", text)
    text = re.sub(r"(?m)^WorkingDirectory=.*$", f"WorkingDirectory={ROOT}", text)
    rendered = tmp_path / UNIT.name
    rendered.write_text(text)
    result = subprocess.run(
        ["systemd-analyze", "verify", str(rendered)], capture_output=True, text=True, timeout=60
    )
    complaints = [line for line in (result.stdout + result.stderr).splitlines() if UNIT.name in line]
    assert result.returncode == 0 and not complaints, "\n".join(complaints) or result.stderr


def test_systemd_settings_boot_a_ready_server(start_server: Callable[..., Proc]) -> None:
    server = start_server(**settings_env(unit_env()))  # waits for /ready
    try:
        assert httpx.get(server.url + "/health", timeout=5).json()["service"] == "rollout-server"
    finally:
        server.stop()


def nginx_seconds(directive: str) -> float:
    value = re.search(rf"(?m)^\s{{4}}{directive}\s+(\d+)s;", NGINX.read_text())
    assert value is not None, f"no server-level {directive}"
    return float(value.group(1))


def test_shutdown_and_proxy_timeouts_cover_the_longest_rollout() -> None:
    k8s_env = container_env(server_container())
    unit = unit_env()
    (k8s_longest, k8s_drain), (unit_longest, unit_drain) = app_timeouts(k8s_env), app_timeouts(unit)

    pre_stop = server_container()["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop[0] == "sleep"
    assert k8s_drain >= k8s_longest
    assert pod_spec()["terminationGracePeriodSeconds"] > float(pre_stop[1]) + k8s_drain

    assert unit_drain >= unit_longest
    assert float(unit_values("TimeoutStopSec")[0]) > unit_drain

    assert nginx_seconds("proxy_read_timeout") > max(k8s_longest, unit_longest)


def render_nginx(backends: list[str], listen_port: int) -> str:
    """The shipped config with its upstream servers and listen address replaced."""
    text = NGINX.read_text()
    block = re.search(r"(?ms)^upstream rollout_servers \{\n.*?^\}", text)
    assert block is not None, "no `upstream rollout_servers { ... }` block"
    servers = list(re.finditer(r"(?m)^([ \t]+)server[ \t]+[^;\s]+((?:[ \t]+[^;\s]+)*);$", block.group(0)))
    assert servers, "no `server host:port ...;` lines in the upstream"
    indent, params = servers[0].group(1), servers[0].group(2)
    replacement = "\n".join(f"{indent}server {b}{params};" for b in backends)
    upstream = block.group(0)[: servers[0].start()] + replacement + block.group(0)[servers[-1].end() :]
    text = text.replace(block.group(0), upstream)
    text, listens = re.subn(
        r"(?m)^([ \t]+)listen[ \t]+[^;\s]+;", rf"\g<1>listen 127.0.0.1:{listen_port};", text
    )
    assert listens == 1, "expected exactly one `listen` line"
    return text


def nginx_wrapper(workdir: Path, include: Path) -> str:
    temp = "\n".join(
        f"    {kind}_temp_path {workdir / kind};"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    # Run as root, the master would hand its workers to an unprivileged user that cannot
    # enter pytest's private temporary directories.
    user = "user root;\n" if os.geteuid() == 0 else ""
    return (
        f"{user}worker_processes 2;\nerror_log {workdir / 'error.log'} info;\npid {workdir / 'nginx.pid'};\n"
        "events { worker_connections 256; }\n"
        "http {\n"
        "    log_format upstream '$request $status $upstream_addr';\n"
        f"    access_log {workdir / 'access.log'} upstream;\n{temp}\n"
        f"    include {include};\n"
        "}\n"
    )


def nginx_version() -> tuple[int, ...]:
    out = subprocess.run(["nginx", "-v"], capture_output=True, text=True, timeout=10).stderr
    match = re.search(r"nginx/(\d+)\.(\d+)\.(\d+)", out)
    return tuple(int(n) for n in match.groups()) if match else (0,)


def nginx_logs(workdir: Path) -> str:
    logs = [workdir / name for name in ("error.log", "access.log", "stderr.log")]
    return "\n".join(f"--- {log.name}\n{log.read_text()[-3000:]}" for log in logs if log.exists())


def stop_nginx(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGQUIT)  # graceful: finish the requests in flight
    try:
        proc.wait(15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


def nginx_answers(proc: subprocess.Popen[bytes], url: str, workdir: Path) -> bool:
    """True once nginx passes /health through; False if it exited (its port was taken)."""
    deadline = time.monotonic() + 30
    while proc.poll() is None:
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url + "/health", timeout=2).status_code == 200:
                return True
        assert time.monotonic() < deadline, f"nginx did not answer in 30 s\n{nginx_logs(workdir)}"
        time.sleep(0.1)
    return False


@contextlib.contextmanager
def running_nginx(workdir: Path, backends: list[str]) -> Iterator[str]:
    include = workdir / NGINX.name
    config = workdir / "nginx.conf"
    config.write_text(nginx_wrapper(workdir, include))
    # -e (1.19.5+) keeps nginx away from /var/log/nginx before it has read the config.
    early_log = ["-e", str(workdir / "error.log")] if nginx_version() >= (1, 19, 5) else []
    args = ["nginx", "-p", str(workdir), "-c", str(config), *early_log]
    # free_port() only finds a port that was free a moment ago: try again if another process
    # binds it before nginx does.
    for _ in range(3):
        url = f"http://127.0.0.1:{(port := free_port())}"
        include.write_text(render_nginx(backends, port))
        checked = subprocess.run([*args, "-t"], capture_output=True, text=True, timeout=30)
        assert checked.returncode == 0, checked.stderr
        with (workdir / "stderr.log").open("wb") as stderr:
            proc = subprocess.Popen([*args, "-g", "daemon off;"], stdout=subprocess.DEVNULL, stderr=stderr)
        if nginx_answers(proc, url, workdir):
            break
    else:
        pytest.fail(f"nginx exited at start-up three times\n{nginx_logs(workdir)}")
    try:
        yield url
    finally:
        stop_nginx(proc)


def rollout_body(rollout_id: str, server_url: str) -> dict[str, Any]:
    return {
        "rollout_id": rollout_id,
        "server_url": server_url,
        "messages": [{"role": "user", "content": "What is 2+3?"}],
        "sampling_params": {},
        "tokenizer_name": QWEN3,
    }


def completed_rollouts(server: Proc) -> float:
    text = httpx.get(server.url + "/metrics", timeout=5).text
    match = re.search(r'(?m)^rollout_requests_total\{status="completed"\} (\S+)$', text)
    return float(match.group(1)) if match else 0.0


def test_nginx_config_structure() -> None:
    text = NGINX.read_text()
    upstream = re.search(r"(?ms)^upstream rollout_servers \{\n.*?^\}", text)
    assert upstream is not None
    assert re.search(r"(?m)^\s+least_conn;", upstream.group(0)) and re.search(
        r"(?m)^\s+keepalive \d+;", upstream.group(0)
    )
    assert re.search(r"(?m)^\s{4}proxy_http_version 1\.1;", text)
    assert re.search(r'(?m)^\s{4}proxy_set_header Connection "";', text)
    # proxy_set_header in a location would stop it inheriting the server-level headers above.
    for location in re.finditer(r"(?ms)^\s{4}location .*?^\s{4}\}", text):
        assert "proxy_set_header" not in location.group(0) and "proxy_http_version" not in location.group(0)
    assert re.search(r"(?m)^\s+location = /health \{", text)


def test_nginx_balances_real_rollouts_over_two_real_servers(
    start_server: Callable[..., Proc], sim: Proc, tmp_path: Path
) -> None:
    if shutil.which("nginx") is None:
        pytest.skip("nginx is not installed (CI installs it with `apt-get install -y nginx`)")
    backends = [start_server(), start_server()]
    before = [completed_rollouts(b) for b in backends]
    ids = [f"deploy-nginx-{uuid.uuid4().hex[:8]}-{i}" for i in range(8)]
    try:
        with running_nginx(tmp_path, [b.url.removeprefix("http://") for b in backends]) as lb:
            health = httpx.get(lb + "/health", timeout=10)
            assert health.status_code == 200 and health.json()["service"] == "rollout-server"

            server_url = f"{sim.url}/s/sequential/turns=2"
            with httpx.Client(timeout=120) as client, ThreadPoolExecutor(len(ids)) as threads:
                responses = list(
                    threads.map(lambda i: client.post(lb + "/rollout", json=rollout_body(i, server_url)), ids)
                )
            for response in responses:
                assert response.status_code == 200, f"{response.text[:500]}\n{nginx_logs(tmp_path)}"
                result = response.json()
                assert result["status"] == "COMPLETED", result
                assert result["extra_fields"]["alignment"]["drift_events"] == 0

            # Bigger than nginx's default client_max_body_size (1 MB): reaches the server's validation.
            big = httpx.post(lb + "/rollout", json={"padding": "x" * 2_000_000}, timeout=30)
            assert big.status_code == 422, f"{big.text[:300]}\n{nginx_logs(tmp_path)}"
            assert httpx.get(lb + "/metrics", timeout=5).status_code == 404, (
                "scrape each backend, not the balancer"
            )

        served = [completed_rollouts(b) - start for b, start in zip(backends, before, strict=True)]
        assert sum(served) == len(ids) and all(n > 0 for n in served), (
            f"completed rollouts per backend: {served}\n{nginx_logs(tmp_path)}"
        )
        for rollout_id in ids:
            record = httpx.get(f"{sim.url}/sim/rollouts/{rollout_id}", timeout=10).json()
            assert record["ok"] is True, record
    finally:
        for backend in backends:
            backend.stop()
