"""The servers and load generators of ``make bench`` (tools/bench.py): starting the ceiling,
the minimal handler and the proxy pinned to their core, signed requests and ``wrk`` scripts,
``wrk`` and ``xks-proxy loadtest`` runs, and the proxy's own histograms scraped around a run."""

from __future__ import annotations

import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib.metadata import version
from pathlib import Path
from typing import Any

from xks_proxy.loadtest.workload import XksTarget, XksWorkload
from xks_proxy.sigv4 import Credential

ROOT = Path(__file__).resolve().parents[1]


BIN = Path(sys.executable).parent


OPERATIONS = ("encrypt", "decrypt", "metadata", "health")


NAMES = {"encrypt": "Encrypt", "decrypt": "Decrypt", "metadata": "GetKeyMetadata",
         "health": "GetHealthStatus"}  # fmt: skip


RATES = (450, 900, 1800)


# Generator processes for a rate that one saturated (xks_proxy/loadtest/stats.py says when).
GENERATOR_PROCESSES = 2


KEY_ID = "key-both"

# The core every measured server runs on; load generators run on the others.
PROXY_CORE = 0


def pinned(core: int | str, command: list[str]) -> list[str]:
    """``core``: one core, or a taskset list such as ``1-3``."""
    if os.cpu_count() and os.cpu_count() >= 2 and shutil.which("taskset"):  # type: ignore[operator]
        return ["taskset", "-c", str(core), *command]
    return command


def generator_cores() -> str:
    """Every core but the server's (``PROXY_CORE``, 0): on two cores, all generator processes share
    core 1, so more of them help only when one process's loop, not the core, is the limit."""
    count = os.cpu_count() or 1
    return "1" if count <= 2 else f"1-{count - 1}"


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_for_ping(port: int, scheme: str = "http") -> None:
    import ssl

    context = ssl._create_unverified_context() if scheme == "https" else None  # noqa: S323
    deadline = time.monotonic() + 60  # start-up on a busy shared machine can take seconds
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{scheme}://127.0.0.1:{port}/ping", context=context,
                                        timeout=2):  # fmt: skip
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"nothing answered on port {port}")


@dataclass
class Server:
    process: subprocess.Popen[bytes]
    port: int

    def rss_kib(self) -> tuple[int, int]:
        """Current and peak resident memory (VmRSS, VmHWM) of the server process."""
        fields = dict(
            line.split(":", 1) for line in Path(f"/proc/{self.process.pid}/status").read_text()
            .splitlines() if ":" in line
        )  # fmt: skip
        return int(fields["VmRSS"].split()[0]), int(fields["VmHWM"].split()[0])

    def cpu_seconds(self) -> float:
        """User and system CPU time the server process has used (/proc/PID/stat)."""
        fields = Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        self.process.wait(timeout=60)


def start_proxy(config: Path, log: Path, scheme: str = "http", pin: bool = True,
                workers: int = 1, source: Path | None = None) -> Server:  # fmt: skip
    """``source``: run the proxy from another checkout (``--baseline``) instead of this one."""
    port = free_port()
    command = [sys.executable, "-m", "xks_proxy", "serve", "--config", str(config), "--port",
               str(port), "--workers", str(workers)]  # fmt: skip
    env = os.environ.copy()
    if source is not None:
        env["PYTHONPATH"] = str(source)
    process = subprocess.Popen(
        pinned(PROXY_CORE, command) if pin else command,
        stdout=subprocess.DEVNULL, stderr=log.open("wb"), env=env, cwd=source,
    )  # fmt: skip
    wait_for_ping(port, scheme)
    return Server(process, port)


def start_ceiling(bodies: dict[str, str], directory: Path) -> Server:
    port = free_port()
    path = directory / "ceiling-bodies.json"
    path.write_text(json.dumps(bodies))
    process = subprocess.Popen(
        pinned(PROXY_CORE, [sys.executable, "-m", "tools.ceiling_server", str(port), str(path)]),
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    wait_for_ping_post(port)
    return Server(process, port)


def wait_for_ping_post(port: int) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(urllib.request.Request(f"http://127.0.0.1:{port}/x",
                                                          data=b"{}"), timeout=2)  # fmt: skip
            return
        except urllib.error.HTTPError:
            return  # it answered (the minimal handler refuses an unsigned request)
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"nothing answered on port {port}")


def lua_script(body: bytes, headers: dict[str, str], directory: Path, name: str) -> Path:
    lines = ['wrk.method = "POST"', f"wrk.body = [==[{body.decode()}]==]"]
    # Host too: the signed one, so every server of an interleaved run verifies the same request.
    lines += [f'wrk.headers["{k}"] = "{v}"' for k, v in headers.items()]
    path = directory / f"{name}.lua"
    path.write_text("\n".join(lines) + "\n")
    return path


def wrk(url: str, script: Path, seconds: int, connections: int = 16, threads: int = 1,
        pin: bool = True) -> float:  # fmt: skip
    command = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{seconds}s", "-s", str(script), url]
    result = subprocess.run(
        pinned(1, command) if pin else command,
        capture_output=True, text=True, timeout=seconds + 60, check=True,
    )  # fmt: skip
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", result.stdout)
    if bad:
        raise RuntimeError(f"{bad.group(1)} error responses from {url}:\n{result.stdout}")
    match = re.search(r"Requests/sec:\s+([\d.]+)", result.stdout)
    assert match, result.stdout
    return float(match.group(1))


def deployment(directory: Path, *extra: str) -> tuple[Path, XksTarget]:
    subprocess.run([str(BIN / "xks-proxy"), "init", str(directory), "--key-id", KEY_ID,
                    "--port", "0", "--metrics-port", str(free_port()),
                    "--admin-port", str(free_port()), *extra],
                   check=True, capture_output=True)  # fmt: skip
    config = directory / "xks-proxy.toml"
    kms = json.loads(
        subprocess.run(
            [str(BIN / "xks-proxy"), "kms-config", "--config", str(config)],
            check=True,
            capture_output=True,
        ).stdout
    )
    credential = kms["XksProxyAuthenticationCredential"]
    target = XksTarget("", kms["XksProxyUriPath"], "us-east-1",
                       Credential(credential["AccessKeyId"], credential["RawSecretAccessKey"]),
                       KEY_ID)  # fmt: skip
    return config, target


def use_softhsm(config: Path, directory: Path) -> None:
    """Point a deployment at a fresh SoftHSM2 token holding KEY_ID and the health key."""
    from tests.softhsm import make_softhsm

    hsm = make_softhsm(directory / "softhsm")
    os.environ["SOFTHSM2_CONF"] = str(hsm.conf)
    hsm.init_token("bench")
    text = config.read_text()
    software = text[text.index("[backends.local]") : text.index("[[key_stores]]")]
    text = text.replace(software, hsm.toml("bench", sessions=8, session_wait_ms=1000) + "\n")
    config.write_text(text.replace('backend = "local"', 'backend = "hsm"'))
    for args in (["--health"], ["--label", KEY_ID]):
        subprocess.run([str(BIN / "xks-proxy"), "pkcs11", "create-key", "--config", str(config),
                        *args], check=True, capture_output=True)  # fmt: skip


def requests_for(target: XksTarget, port: int, directory: Path, tag: str) -> dict[str, Any]:
    """Signed request, wrk script and the proxy's real answer for each operation."""
    workload = XksWorkload(XksTarget(f"http://127.0.0.1:{port}", target.uri_path, target.region,
                                     target.credential, target.key_id), 4096, 64)  # fmt: skip
    prepared: dict[str, Any] = {}
    for operation in OPERATIONS:
        url, body, headers = workload.request(operation)
        request = urllib.request.Request(url, data=body, headers=headers, method="POST")
        with urllib.request.urlopen(request, timeout=10) as response:
            answer = response.read().decode()
        if operation == "encrypt":
            workload.set_ciphertext(json.loads(answer))
        prepared[operation] = {
            "path": workload.path(operation),
            "answer": answer,
            "body": body,
            "headers": headers,
            "script": lua_script(body, headers, directory, f"{tag}-{operation}"),
            # A signature is good for 5 minutes (xks-spec §6.2); a long run signs again.
            "resign": lambda op=operation, name=f"{tag}-{operation}": lua_script(
                *workload.request(op)[1:], directory, name
            ),
        }
    return prepared


def open_loop(port: int, target: XksTarget, cacert: Path, rate: int, seconds: int,
              kms: Path, processes: int = 1) -> dict[str, Any]:  # fmt: skip
    result = subprocess.run(
        pinned(generator_cores(), [
            str(BIN / "xks-proxy"), "loadtest", "--url", f"https://127.0.0.1:{port}",
            "--kms-config", str(kms), "--key-id", target.key_id, "--rate", str(rate),
            "--duration", str(seconds), "--connections", "64", "--cacert", str(cacert),
            "--processes", str(processes), "--json"]),
        capture_output=True, text=True, timeout=seconds + 120, check=False,
    )  # fmt: skip
    report: dict[str, Any] = json.loads(result.stdout)
    return report


def metrics_port_of(config: Path) -> int:
    import tomllib

    port: int = tomllib.loads(config.read_text())["metrics"]["port"]
    return port


def admin_port_of(config: Path) -> int:
    import tomllib

    port: int = tomllib.loads(config.read_text())["admin"]["port"]
    return port


_BUCKET = re.compile(r'^(xks_request_duration_seconds|xks_event_loop_lag_seconds)_bucket\{(.*)\} '
                     r'([0-9.e+]+)$')  # fmt: skip


def scrape(port: int) -> dict[str, dict[float, float]]:
    """Cumulative bucket counts of the request-duration (successful Encrypt) and loop-lag
    histograms, by upper bound."""
    # A proxy still draining an overloaded run can take its time to answer on a busy machine.
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=60).read().decode()
    buckets: dict[str, dict[float, float]] = {"request": {}, "lag": {}}
    for line in text.splitlines():
        match = _BUCKET.match(line)
        if match is None:
            continue
        name, labels, count = match.groups()
        bound = float(re.search(r'le="([^"]+)"', labels).group(1))  # type: ignore[union-attr]
        if name == "xks_event_loop_lag_seconds":
            kind = "lag"
        elif 'operation="Encrypt"' in labels and 'outcome="success"' in labels:
            kind = "request"
        else:
            continue
        buckets[kind][bound] = buckets[kind].get(bound, 0) + float(count)
    return buckets


_FULL_GC = re.compile(r'^xks_gc_pause_seconds_(count|sum)\{generation="2"\} ([0-9.e+-]+)$', re.M)


def full_collections(port: int) -> tuple[float, float]:
    """How many full (generation-2) collections the proxy has made, and their total seconds."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=60).read().decode()
    found = dict(_FULL_GC.findall(text))
    return float(found.get("count", 0)), float(found.get("sum", 0))


_ON_LOOP = re.compile(r"^xks_pkcs11_calls_on_event_loop\{[^}]*\} ([0-9.e+-]+)$", re.M)


def calls_on_event_loop(port: int) -> bool:
    """Whether every PKCS#11 backend of the proxy still runs its calls on the event loop."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=60).read().decode()
    values = [float(value) for value in _ON_LOOP.findall(text)]
    return bool(values) and all(value == 1 for value in values)


def _quantile(buckets: dict[float, float], q: float) -> float | None:
    """Prometheus's histogram_quantile on cumulative buckets (linear within a bucket)."""
    bounds = sorted(buckets)
    if not bounds or buckets[bounds[-1]] == 0:
        return None
    rank = q * buckets[bounds[-1]]
    lower, below = 0.0, 0.0
    for bound in bounds:
        if buckets[bound] >= rank:
            if bound == float("inf"):
                return lower
            inside = buckets[bound] - below
            return lower + (bound - lower) * ((rank - below) / inside if inside else 1)
        lower, below = bound, buckets[bound]
    return lower


def proxy_figures(before: dict[str, dict[float, float]],
                  after: dict[str, dict[float, float]]) -> dict[str, Any]:  # fmt: skip
    figures: dict[str, Any] = {}
    for kind, name in (("request", "request_p99_ms"), ("lag", "loop_lag_p99_ms")):
        delta = {b: after[kind][b] - before[kind].get(b, 0) for b in after[kind]}
        value = _quantile(delta, 0.99)
        figures[name] = "-" if value is None else round(value * 1000, 2)
    return figures


def machine() -> dict[str, str]:
    cpu = next((line.split(":", 1)[1].strip() for line in
                Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())  # fmt: skip
    softhsm = subprocess.run(["softhsm2-util", "--version"], capture_output=True, text=True,
                             check=False).stdout.strip()  # fmt: skip
    wrk_version = subprocess.run(["wrk", "-v"], capture_output=True, text=True,
                                 check=False).stdout.split("\n")[0]  # fmt: skip
    return {
        "cores": str(os.cpu_count()),
        "cpu": cpu,
        "python": platform.python_version(),
        "libraries": ", ".join(f"{p} {version(p)}" for p in (
            "aiohttp", "cryptography", "prometheus-client", "python-pkcs11", "orjson")),
        "softhsm2": softhsm,
        "wrk": wrk_version,
        "kernel": platform.release(),
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
    }  # fmt: skip


def start_minimal(config: Path, log: Path) -> Server:
    port = free_port()
    process = subprocess.Popen(
        pinned(PROXY_CORE, [sys.executable, "-m", "tools.minimal_server", str(port),
                            str(config), KEY_ID]),
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=log.open("wb"),
    )  # fmt: skip
    wait_for_ping_post(port)
    return Server(process, port)


def replayed(prepared: dict[str, Any]) -> dict[str, tuple[str, bytes, dict[str, str]]]:
    return {op: (item["path"], item["body"], item["headers"]) for op, item in prepared.items()}
