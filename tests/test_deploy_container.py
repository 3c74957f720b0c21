"""deploy/container: no container engine or registry is reachable here, so the images are not
built; both Containerfiles are parsed (dockerfile-parse) and held to the rules a serious image
follows: pinned multi-stage base, the app installed from constraints.txt, a non-root user,
state under volumes (read-only root), STOPSIGNAL SIGTERM, the XKS / ping / metrics ports of
the Kubernetes ConfigMap exposed, and a HEALTHCHECK that is run for real against a proxy's
/ping (exit 0 while serving, non-zero once SIGTERM turned /ping to 503)."""

from __future__ import annotations

import io
import json
import re
import signal
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml
from dockerfile_parse import DockerfileParser

from tests.conftest import make_deployment
from tests.proxy_process import ProxyProcess

ROOT = Path(__file__).parent.parent
CONTAINER = ROOT / "deploy" / "container"
FILES = [CONTAINER / "Containerfile", CONTAINER / "Containerfile.softhsm2"]
# An exact version tag (x.y.z-variant) or a digest: never "latest" or a moving "3.11".
PINNED = re.compile(r"(:\d+\.\d+\.\d+[-\w.]*|@sha256:[0-9a-f]{64})$")


def parse(path: Path) -> DockerfileParser:
    # The parser reads its file object lazily; an in-memory copy needs no closing.
    return DockerfileParser(fileobj=io.StringIO(path.read_text()))


def instructions(parser: DockerfileParser, name: str) -> list[str]:
    return [i["value"] for i in parser.structure if i["instruction"] == name]


def last_stage(parser: DockerfileParser) -> list[Any]:
    """The instructions of the final (shipped) stage."""
    structure = parser.structure
    start = max(i for i, step in enumerate(structure) if step["instruction"] == "FROM")
    return structure[start:]


def kubernetes_proxy_config() -> dict[str, object]:
    configmap = yaml.safe_load((ROOT / "deploy" / "kubernetes" / "configmap.yaml").read_text())
    config: dict[str, object] = tomllib.loads(configmap["data"]["xks-proxy.toml"])
    return config


def healthcheck_argv(parser: DockerfileParser) -> list[str]:
    (healthcheck,) = instructions(parser, "HEALTHCHECK")
    argv: list[str] = json.loads(healthcheck.split("CMD", 1)[1])
    return argv


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_containerfile_rules(path: Path) -> None:
    parser = parse(path)
    assert all(PINNED.search(image) for image in parser.parent_images), parser.parent_images
    final = last_stage(parser)
    final_names = [step["instruction"] for step in final]
    # The shipped stage ends as a non-root user (numeric, so runAsNonRoot can check it).
    users = [step["value"] for step in final if step["instruction"] == "USER"]
    assert users and users[-1].split(":")[0].isdigit() and users[-1].split(":")[0] != "0"
    # ... after its last RUN (nothing runs as root after the switch).
    last = {name: i for i, name in enumerate(final_names)}
    assert last["USER"] > last["RUN"]
    assert instructions(parser, "STOPSIGNAL")[-1] == "SIGTERM"
    config = kubernetes_proxy_config()
    server, metrics = config["server"], config["metrics"]
    assert isinstance(server, dict) and isinstance(metrics, dict)
    exposed = set(instructions(parser, "EXPOSE")[-1].split())
    assert exposed == {f"{server['port']}/tcp", f"{server['ping_port']}/tcp",
                       f"{metrics['port']}/tcp"}  # fmt: skip
    argv = healthcheck_argv(parser)
    assert f"http://127.0.0.1:{server['ping_port']}/ping" in argv[-1]
    assert json.loads(instructions(parser, "ENTRYPOINT")[-1]) == ["xks-proxy"]
    assert json.loads(instructions(parser, "CMD")[-1]) == [
        "serve", "--config", "/etc/xks-proxy/config/xks-proxy.toml"]  # fmt: skip


def test_main_image_is_multi_stage_from_constraints_with_volumes() -> None:
    parser = parse(FILES[0])
    assert parser.is_multistage
    stages = [v.split(" AS ")[-1] for v in instructions(parser, "FROM")]
    assert stages == ["build", "runtime"]
    runs = " ".join(instructions(parser, "RUN"))
    installs = re.findall(r"pip install[^&]*", runs)
    assert installs and all("-c constraints.txt" in each for each in installs)
    # Everything COPY takes from the build context exists in the repository.
    for copy in instructions(parser, "COPY"):
        if not copy.startswith("--from="):
            for source in copy.split()[:-1]:
                assert (ROOT / source).exists(), source
    assert any(c.startswith("--from=build ") for c in instructions(parser, "COPY"))
    # The shipped stage has no compiler: only the venv comes across.
    assert "build-essential" not in " ".join(s["value"] for s in last_stage(parser))
    volumes = set(json.loads(instructions(parser, "VOLUME")[-1]))
    assert volumes == {"/etc/xks-proxy", "/var/lib/xks-proxy", "/var/log/xks-proxy",
                       "/run/xks-proxy"}  # fmt: skip


def test_the_healthcheck_command_follows_ping(tmp_path: Path) -> None:
    """The HEALTHCHECK's exact argv (the container's ``python`` is this one), pointed at a
    real proxy's ping port."""
    argv = healthcheck_argv(parse(FILES[0]))
    deployment = make_deployment(
        tmp_path,
        **{"max_body_bytes = 65536": "max_body_bytes = 65536\nshutdown_delay_seconds = 3\n"
           'ping_host = "127.0.0.1"\nping_port = 0'},
    )  # fmt: skip
    with ProxyProcess(deployment.config_path, ready="load-balancer ping") as proxy:
        proxy.wait_for("key store")
        argv = [sys.executable, *argv[1:-1], argv[-1].replace(":8081/", f":{proxy.ping_port}/")]
        assert subprocess.run(argv, capture_output=True, timeout=10, check=False).returncode == 0
        proxy.send_signal(signal.SIGTERM)
        proxy.wait_for("SIGTERM: /ping answers 503")
        unhealthy = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
        assert unhealthy.returncode != 0
        assert "503" in unhealthy.stderr
