"""``make bench``: a reproducible benchmark on loopback; writes docs/benchmarks.md and
docs/latency.png.

1. Ceiling: ``tools/ceiling_server.py`` (bare aiohttp, reads the body, answers a pre-built body
   of the size the proxy answers) under ``wrk`` with the same pre-signed request.
2. The proxy, one worker, software backend, metrics and audit log on: Encrypt, Decrypt,
   GetKeyMetadata and GetHealthStatus under the same ``wrk`` load; each a ratio of the ceiling
   measured in the same run.
3. The same with the PKCS#11 backend on a SoftHSM2 token.
4. Open-loop latency over TLS with keep-alive at 450, 900 and 1,800 requests/s
   (``xks-proxy loadtest``), and 5. peak memory under load and after a soak.
6. The machine and library versions, recorded with the numbers.

Servers run on core 0 and generators on core 1 (``taskset``) where the machine has two cores.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib.metadata import version
from pathlib import Path
from typing import Any

from tools.micro_ab import rows as micro_rows
from tools.micro_ab import table as micro_table
from tools.stages import STAGES, with_framework
from tools.stages import measure as measure_stages
from xks_proxy.loadtest.stats import LATE_SEND_MS, SATURATED_CPU_SHARE
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


def pinned(core: int | str, command: list[str]) -> list[str]:
    """``core``: one core, or a taskset list such as ``1-3``."""
    if os.cpu_count() and os.cpu_count() >= 2 and shutil.which("taskset"):  # type: ignore[operator]
        return ["taskset", "-c", str(core), *command]
    return command


def generator_cores() -> str:
    """Every core but the server's (core 0): on two cores, all generator processes share
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
        pinned(0, command) if pin else command,
        stdout=subprocess.DEVNULL, stderr=log.open("wb"), env=env, cwd=source,
    )  # fmt: skip
    wait_for_ping(port, scheme)
    return Server(process, port)


def start_ceiling(bodies: dict[str, str], directory: Path) -> Server:
    port = free_port()
    path = directory / "ceiling-bodies.json"
    path.write_text(json.dumps(bodies))
    process = subprocess.Popen(
        pinned(0, [sys.executable, "-m", "tools.ceiling_server", str(port), str(path)]),
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


def plot(latency: dict[int, dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(7, 4.2))
    for key, style in (("p50", "o-"), ("p99", "s-"), ("p99.9", "^-"), ("max", "x--")):
        axes.plot(list(latency), [latency[r]["latency_ms"][key] for r in latency], style,
                  label=key)  # fmt: skip
    axes.axhline(250, color="red", linewidth=0.8, label="KMS timeout (250 ms)")
    axes.set_yscale("log")
    axes.set_xlabel("offered rate (requests/s, open loop, TLS, Encrypt 4 KiB)")
    axes.set_ylabel("latency from scheduled time (ms)")
    axes.set_title("xks-proxy, one worker, software backend")
    axes.legend()
    axes.grid(True, which="both", alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=110)


def measured(data: dict[str, Any]) -> list[str]:
    return [op for op in OPERATIONS if op in data["software"]]


def _ratio_table(data: dict[str, Any]) -> list[str]:
    ceiling, minimal, soft = data["ceiling"], data["minimal"], data["software"]
    lines = [
        "| operation | ceiling req/s | minimal handler req/s | proxy req/s | minimal / ceiling "
        "| proxy / ceiling | proxy / minimal |",
        "|---|---|---|---|---|---|---|",
    ]
    for op in measured(data):
        lines.append(
            f"| {NAMES[op]} | {ceiling[op]:.0f} | {minimal[op]:.0f} | {soft[op]:.0f} "
            f"| {minimal[op] / ceiling[op]:.2f} | {soft[op] / ceiling[op]:.2f} "
            f"| {soft[op] / minimal[op]:.2f} |"
        )
    cpu = data["cpu_us"]
    names = [n for n in ("ceiling", "minimal", "software", "baseline") if f"{n}.encrypt" in cpu]
    lines += ["", "CPU time of the server process per request (µs; robust to a busy machine, "
              "where throughput is not), and the ratio ceiling ÷ server:", "",
              "| operation | " + " | ".join(names) + " | " +
              " | ".join(f"ceiling / {n}" for n in names[1:]) + " |",
              "|---|" + "---|" * (2 * len(names) - 1)]  # fmt: skip
    for op in measured(data):
        values = [cpu[f"{n}.{op}"] for n in names]
        lines.append(f"| {NAMES[op]} | " + " | ".join(f"{v:.0f}" for v in values) + " | "
                     + " | ".join(f"{values[0] / v:.2f}" for v in values[1:]) + " |")  # fmt: skip
    if "baseline" in data:
        base = data["baseline"]
        lines += ["", "| operation | baseline req/s | baseline / ceiling | proxy / baseline |",
                  "|---|---|---|---|"]  # fmt: skip
        lines += [f"| {NAMES[op]} | {base[op]:.0f} | {base[op] / ceiling[op]:.2f} "
                  f"| {soft[op] / base[op]:.2f} |" for op in measured(data)]  # fmt: skip
    return lines


def _stage_table(data: dict[str, Any]) -> list[str]:
    columns = (*STAGES, "framework", "total")
    lines = [
        "| operation | " + " | ".join(columns) + " |",
        "|---|" + "---|" * len(columns),
    ]
    for op in measured(data):
        stages = data["stages"][op]
        lines.append(f"| {NAMES[op]} | " + " | ".join(f"{stages[c]:.1f}" for c in columns) + " |")
    return lines


def _pkcs11_table(data: dict[str, Any]) -> list[str]:
    soft, cpu = data["software_again"], data["cpu_us"]
    variants = [name for name in ("pkcs11", "pkcs11_loop") if name in data]
    titles = {"pkcs11": "threads (default)", "pkcs11_loop": "`calls_on_event_loop`"}
    lines = [
        "| operation | software req/s | "
        + " | ".join(f"PKCS#11 {titles[n]} req/s | ratio" for n in variants)
        + " | CPU µs/request: software | "
        + " | ".join(titles[n] for n in variants)
        + " |",
        "|---|---|" + "---|---|" * len(variants) + "---|" + "---|" * len(variants),
    ]
    for op in data["pkcs11"]:
        cells = [f"{data[n][op]:.0f} | {data[n][op] / soft[op]:.2f}" for n in variants]
        cpus = [f"{cpu[f'{n}.{op}']:.0f}" if f"{n}.{op}" in cpu else "-"
                for n in ("software_again", *variants)]  # fmt: skip
        lines.append(f"| {NAMES[op]} | {soft[op]:.0f} | " + " | ".join(cells) + " | "
                     + " | ".join(cpus) + " |")  # fmt: skip
    return lines


def _workers_table(data: dict[str, Any]) -> list[str]:
    one, two = data["workers"]["1"], data["workers"]["2"]
    return [
        "| workers | Encrypt req/s | efficiency (req/s ÷ (workers × one worker's)) |",
        "|---|---|---|",
        f"| 1 | {one:.0f} | 1.00 |",
        f"| 2 | {two:.0f} | {two / (2 * one):.2f} |",
    ]


def report(data: dict[str, Any]) -> str:
    lines = [
        "# Benchmarks",
        "",
        f"Made by `make bench`{' (quick mode)' if data['quick'] else ''} "
        f"({data['seconds']} s per throughput run, {data['pairs']} interleaved rounds, the "
        f"median kept) on {data['machine']['date']}. Ratios are taken within this one run; the "
        "machine is shared, so absolute numbers move between runs more than ratios do.",
        "",
        "## Throughput (closed loop, `wrk -t1 -c16`, plain HTTP, 4 KiB plaintext, 64 B AAD)",
        "",
        *_ratio_table(data),
        "",
        "The ceiling is a bare aiohttp endpoint that reads the same request and answers a "
        "pre-built body of the same size as the proxy's answer (tools/ceiling_server.py); the "
        "minimal handler does only the essential work: SigV4, orjson, strict pybase64, AES-GCM "
        "with EKM_AAD (tools/minimal_server.py); the proxy runs one worker, software backend, "
        "with metrics, the audit log, validation and the request deadline on. Target: Encrypt "
        "≥ 0.5× the ceiling (stretch 0.56).",
        "",
        "## Where a request's time goes (µs per request, proxy, software backend)",
        "",
        *_stage_table(data),
        "",
        "Stages are measured in process on the replayed request (tools/stages.py); total is the "
        "proxy process's CPU time per request under wrk, and framework is total minus the "
        "stages: aiohttp's HTTP parsing and writing, the event loop, the handler's glue.",
        "",
        "## Hot-path changes of issue 15, each timed alone (µs per call, before and after, one "
        "run; tools/micro_ab.py)",
        "",
        *micro_table([tuple(row) for row in data["micro"]]),
        "",
    ]
    if "pkcs11" in data:
        lines += [
            "## PKCS#11 (SoftHSM2) against the software backend (interleaved)",
            "",
            *_pkcs11_table(data),
            "",
            "Target: ≥ 0.6× the software backend. PKCS#11 is measured twice: with its calls "
            "on call threads (the default, and the only setting for a network HSM) and with "
            "`calls_on_event_loop = true` (an in-process module such as SoftHSM2: no thread "
            "hop). The ratio is of req/s, which on a busy machine favours the threaded server "
            "(it gets more of a shared core than a single-threaded one); the CPU time per "
            "request does not.",
            "",
            *PKCS11_NOTES,
        ]
    if len(data.get("workers", {})) == 2:
        lines += [
            "## Workers (Encrypt, plain HTTP, `wrk -t2 -c32`)",
            "",
            *_workers_table(data),
            "",
            "This machine has two cores and the generator competes with the workers for them, "
            "so two workers cannot reach 2×: the figure is a lower bound on scaling.",
            "",
        ]
    if "memory" in data:  # set last: the latency section ran to its end
        lines += _latency_section(data)
    lines += [
        "## Machine",
        "",
        *[f"- {key}: {value}" for key, value in data["machine"].items()],
        "",
    ]
    lines += _history(data)
    return "\n".join(lines)


def _history(data: dict[str, Any]) -> list[str]:
    """HISTORY with issue 15's row filled from this run (before → after, Encrypt)."""
    if "encrypt" not in data["software"]:
        return [line.replace("ISSUE15", "-") for line in HISTORY]
    ceiling, after = data["ceiling"]["encrypt"], data["software"]["encrypt"]
    ratio = f"{after / ceiling:.2f}"
    if "encrypt" in data.get("baseline", {}):
        cpu = data["cpu_us"]
        # CPU time per request too: on a shared machine it moves less than req/s does.
        ratio = (f"{data['baseline']['encrypt'] / ceiling:.2f} → {ratio} (CPU per request "
                 f"{cpu['baseline.encrypt']:.0f} → {cpu['software.encrypt']:.0f} µs)")  # fmt: skip
    return [line.replace("ISSUE15", ratio) for line in HISTORY]


def _latency_section(data: dict[str, Any]) -> list[str]:
    lines = [
        "## Open-loop latency (TLS 1.3, keep-alive, Encrypt 4 KiB, `xks-proxy loadtest`)",
        "",
        "| offered req/s | achieved | p50 ms | p99 ms | p99.9 ms | max ms | over 250 ms | errors "
        "| proxy p99 ms (from first byte) | loop lag p99 ms | generator |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for rate, result in data["latency"].items():
        latency = result["latency_ms"]
        proxy = result.get("proxy", {})
        lines.append(
            f"| {rate} | {result['achieved_rate']} | {latency['p50']} | {latency['p99']} | "
            f"{latency['p99.9']} | {latency['max']} | {result['over_250ms_share'] * 100:.3f} % "
            f"| {result['errors'] or 'none'} | {proxy.get('request_p99_ms', '-')} "
            f"| {proxy.get('loop_lag_p99_ms', '-')}{_gc_note(proxy)} | {_generator_cell(result)} |"
        )
    memory = data["memory"]
    lines += [
        "",
        "Latency is measured from each request's scheduled send time (no coordinated omission). "
        "The proxy's own figures come from its histograms (`xks_request_duration_seconds`, "
        "timed from the request's first byte, and `xks_event_loop_lag_seconds`) over the same "
        "run, bucket-interpolated. Target at 1,800 req/s: p99 ≤ 5 ms, p99.9 ≤ 20 ms, nothing "
        "over 250 ms, no error. On a machine shared with other work the generator and the proxy "
        "compete for the same two cores; when even the lowest rate is not achieved, the rows "
        "measure the machine, not the proxy, and the proxy's own p99 and loop lag say so. "
        "The generator column gives its processes, the CPU share of a core its busiest process "
        "used, and how late it sent (p99 after the due time), SATURATED when it used "
        f"{GENERATOR_SATURATION}; a rate where one generator process used "
        f"{SATURATED_CPU_SHARE:.0%} of its core or more was measured again with "
        f"{GENERATOR_PROCESSES} processes, and that row is shown (in brackets the one-process "
        "run, its p99 before the arrow). Generator processes run on the cores the proxy does "
        f"not use ({generator_cores()} here): on two cores they share one. Beside the loop "
        "lag: the proxy's full garbage collections during the run and their total pause "
        "(`xks_gc_pause_seconds`).",
        "",
        "![latency percentiles against offered rate](latency.png)",
        "",
        "## Memory (RSS of the TLS proxy process)",
        "",
        f"- after start: {memory['start_kib'] / 1024:.1f} MiB",
        f"- peak during the latency runs (VmHWM): {memory['peak_kib'] / 1024:.1f} MiB",
        f"- soak, {memory['soak_seconds']} s at {memory['soak_rate']} req/s: "
        f"{memory['soak_before_kib'] / 1024:.1f} MiB before, "
        f"{memory['soak_after_kib'] / 1024:.1f} MiB after",
        "",
    ]
    return lines


GENERATOR_SATURATION = (
    f"≥ {SATURATED_CPU_SHARE:.0%} of a core or sent more than {LATE_SEND_MS:g} ms late at p99"
)


def _gc_note(proxy: dict[str, Any]) -> str:
    """The proxy's full collections during the run (their pauses stop its loop)."""
    full = proxy.get("gc_full")
    return f" (GC gen 2: {full['count']}, {full['ms']} ms)" if full else ""


def _generator_cell(result: dict[str, Any]) -> str:
    """Processes, the busiest one's CPU share, send lag p99; and the one-process run when the
    row was measured again with more processes."""
    generator = result.get("generator")
    if generator is None:  # a report from before the generator measured itself
        return "-"
    cell = (f"{generator['processes']} × {generator['cpu_utilisation'] * 100:.0f} % CPU, "
            f"sent +{generator['send_lag_ms']['p99']} ms")  # fmt: skip
    single = result.get("one_process")
    if single is not None:
        one = single["generator"]
        before, after = single["latency_ms"]["p99"], result["latency_ms"]["p99"]
        cell += f" (1 process: {one['cpu_utilisation'] * 100:.0f} % CPU, p99 {before} → {after} ms)"
    elif generator["saturated"]:
        cell += " SATURATED"
    return cell


# Measured once, before and after the hot-path work, with this tool (each pair in one run).
HISTORY = [
    "## Hot-path work (Encrypt, software backend, ratio to the ceiling)",
    "",
    "| version | ratio | what changed |",
    "|---|---|---|",
    "| first hot path (2026-11-23) | 0.20 | stdlib json, audit line through `logging` with "
    "`dataclasses.asdict`, `strptime` for X-Amz-Date, a Prometheus label lookup per "
    "observation, an aiohttp middleware |",
    "| after profiling (cProfile under wrk) | 0.34 | orjson; audit lines built by hand and "
    "written with one `os.write` on an O_APPEND file; a hand-written X-Amz-Date parser; cached "
    "metric children; no middleware; no timer when the body has already arrived |",
    "| issue 15 (2026-11-29 06:28) | 0.24 → 0.37 | pybase64 (strict, canonical only); duplicate "
    "JSON members found without a second parse; no deadline timer for a backend that does not "
    "wait; one head timer per connection, not per request; the strict Authorization parse "
    "cached per credential and day; the audit timestamp formatted once a second; XKS POSTs past "
    "the router; `gc.freeze()` after start-up |",
    "| issue 15, second pass (2026-11-29 10:24) | 0.40 | request histograms as plain counters "
    "behind a collector (prometheus-client's own with `--workers`); `xks_requests_in_flight` "
    "read from the endpoint's count, not a locked gauge updated twice per request; the request "
    "metadata built once (the audit record takes the validated request's); no exception object "
    "built per request; a body that has arrived read without a coroutine; the audit "
    "timestamp's milliseconds from a table |",
    "| issue 15, third pass | ISSUE15 | XKS requests answered inside `data_received` when their "
    "connection is idle and their body has arrived (web/inline.py): no `start()` task wake-up, "
    "no handler task, no aiohttp Request or Response, the answer's bytes written to the "
    "transport at once, and a task only for an endpoint that waits; hot-path value types as "
    "NamedTuples instead of frozen dataclasses |",
    "",
    "The third pass's row: the proxy before it (`--baseline`, the second pass) and after it, "
    "interleaved in the run above; the other rows are from earlier runs. Measured and not kept:",
    "",
    "- uvloop, measured again: its TLS failure had a cause, not a race. uvloop starts reading "
    "a connection right after `connection_made` even when the protocol paused it there, so the "
    "ClientHello reached the plain protocol before `start_tls` took over (and libuv resets "
    "signal dispositions in the workers it spawns, so a SIGUSR1 during start-up killed them). "
    "A rework fixing both (the listener hands each accepted socket to "
    "`connect_accepted_socket` with the TLS context current then; workers spawned with "
    "`subprocess.Popen`) passed the transport, lifecycle and rolling-restart tests on both "
    "loops, but showed no gain for the proxy in interleaved runs, CPU per request asyncio → "
    "uvloop: before the inline path (load average 11-13) Encrypt 459 → 448 µs and "
    "GetHealthStatus 336 → 393 µs, while the bare endpoint gained 10-20 %; with the inline "
    "path (load average 3-5, 4 rounds of 4 s) Encrypt 387 → 374 µs and GetHealthStatus 239 → "
    "255 µs. Not merged; the standard loop stays.",
    "- `hmac.digest` for the string to sign (the HMAC row above): faster in one run, slower "
    "in two; no consistent gain, so `hmac.new` stays.",
    "- Audit lines of one event-loop iteration in one `write(2)` (the audit-batching row "
    "above): a few µs per line when four lines share an iteration, nothing when one does (an "
    "idle-ish loop, the usual case below saturation), which is under 1 % of a request and "
    "below this machine's noise. The price would be the audit guarantee: the lines would be "
    "written after their answers, so a crash would lose the lines of requests already "
    'answered, and `on_failure = "refuse"` needs each line written before its answer anyway. '
    "Not adopted; every line is still written before its answer.",
    "- The XKS listener on aiohttp's low-level `web.Server`: XKS POSTs already skip the "
    "Application (router, match info, middleware chain; the first pass). What the Application "
    "still costs such a request is building a `web.Request` rather than a `BaseRequest` and a "
    "prepare hook that returns at once, under 1 % of the samples of a py-spy profile under "
    "load; moving the listener would re-home /ping, readiness, the runtime's `cleanup_ctx` and "
    "the drain for that. Not done: the third pass skips more than the low-level server would "
    "(the request and handler tasks, Request and Response) for the requests that matter, and "
    "leaves every other request on aiohttp's path.",
    "- Metric updates batched per loop iteration: deferring a prometheus-client observation "
    "does not make it cheaper; plain counters (above) do.",
    "- Garbage-collector thresholds: with the collector switched off altogether after "
    "start-up (the most any threshold could give), Encrypt's CPU per request did not move "
    "beyond the noise (643 against 629 µs, one interleaved quick run): after `gc.freeze()` the "
    "young generations hold only what requests allocate. The defaults stay.",
    "",
]


# Issue 15's PKCS#11 item: what was measured before and after, each pair in one interleaved run
# (scratch A/B on a machine shared with other work, load average 11-15 on 2 cores).
PKCS11_NOTES = [
    "Where a PKCS#11 request's time went before these changes (Decrypt under wrk, SoftHSM2): "
    "`perf` put 62 % of the process's CPU in the interpreter, 15 % in the kernel, 9 % in libc, "
    "4 % in libcrypto and 2.4 % in SoftHSM itself; py-spy put 20 % of the event-loop thread's "
    "samples in `ThreadPoolExecutor.submit` (the queue put that wakes a thread, which preempts "
    "the loop on the pinned core) and about as much in the threads waiting for the GIL, against "
    "2.5 % in `C_Decrypt` itself; strace counted 54 futex calls and two self-pipe writes per "
    "request. The thread hop, not the token, was the largest cost after the HTTP request path.",
    "",
    "Kept:",
    "",
    "- Calls on plain daemon threads reading a `SimpleQueue`, each outcome back through "
    "`call_soon_threadsafe` together with giving the session back (was: a `concurrent.futures` "
    "future, `wrap_future`, and a second `call_soon_threadsafe` for the session); and finished "
    "calls wake the event loop once per batch, not once per call. In process "
    "(`backend.encrypt`/`decrypt` from 16 tasks, 5 interleaved rounds, load average 6): "
    "executor 356 / 363 µs per call, plain threads 267 / 297, batched wake-ups 256 / 260 "
    "(Encrypt / Decrypt).",
    "- The same through the proxy under wrk, CPU per request before → after, four interleaved "
    "runs at load averages 6-15: Decrypt 889 → 765, 1058 → 912, 899 → 865, 1040 → 849 µs; "
    "Encrypt 941 → 824, 924 → 767, 1024 → 1053, 749 → 848 µs (the software proxy: 500-670 "
    "µs). On this busy machine one server's rounds spread by up to 40 %, so only Decrypt's gain "
    "is consistent here; the idle-machine `make bench` decides.",
    "- `calls_on_event_loop = true` (default false; for an in-process module such as SoftHSM2, "
    "never a network HSM): no hop at all. In process it halves the backend's cost per call "
    "(Decrypt 353 → 199 µs, Encrypt 385 → 205 µs, 16 tasks, one interleaved run). Through the "
    "proxy on the busy machine it did not show (two interleaved runs): Encrypt 872 and 892 "
    "µs per request against 767 and 848 with threads, Decrypt 1149 and 847 against 912 and "
    "849, at under half the req/s, as for the single-threaded software proxy in the same runs "
    "(the scheduler gives a one-thread process less of a shared core than one with runnable "
    "threads; probably why its requests cost more here). Kept as an option, default off, "
    "measured above "
    "next to the default.",
    "",
    "Measured and not kept:",
    "",
    "- A session-object copy of each key (`C_CopyObject` with CKA_TOKEN false): SoftHSM2 "
    "reads the token's generation file and the key's object file under `fcntl` locks on every "
    "`C_EncryptInit`/`C_DecryptInit` of a token object (strace: 2.5 opens and 7.6 `fcntl` per "
    "request), and a raw 4 KiB AES-GCM decrypt costs 96-111 µs on the token object against "
    "29-52 µs on a session copy (in process, two runs). Not adopted: a copy outlives its token "
    "object, so a destroyed key or a lost token would go on decrypting until re-checked "
    "(issue 9's rule that a lost token answers InternalException from the first request), and "
    "HSMs may refuse the copy (CKA_COPYABLE).",
    "- Decrypt slower than Encrypt: not consistent. Decrypt's CPU per request was below "
    "Encrypt's in one run (765 against 824 µs) and above it in another (912 against 767), and "
    "the software proxy's Decrypt costs more than its Encrypt too (a larger request body).",
    "",
]


def interleaved(
    servers: dict[str, Server],
    prepared: dict[str, Any],
    seconds: int,
    pairs: int,
    operations: tuple[str, ...] = OPERATIONS,
) -> dict[str, dict[str, float]]:
    """Each operation against each server in turn, ``pairs`` rounds; the median of each."""
    runs: dict[str, dict[str, list[float]]] = {name: {op: [] for op in operations}
                                               for name in servers}  # fmt: skip
    cpu: dict[str, dict[str, list[float]]] = {name: {op: [] for op in operations}
                                              for name in servers}  # fmt: skip
    for op in operations:
        item = prepared[op]
        item["resign"]()  # the same file, signed now
        for server in servers.values():
            wrk(f"http://127.0.0.1:{server.port}{item['path']}", item["script"], 1)  # warm-up
        for _ in range(pairs):
            for name, server in servers.items():
                url = f"http://127.0.0.1:{server.port}{item['path']}"
                before = server.cpu_seconds()
                rate = wrk(url, item["script"], seconds)
                runs[name][op].append(rate)
                cpu[name][op].append((server.cpu_seconds() - before) / (rate * seconds) * 1e6)
    results = {name: {op: statistics.median(values) for op, values in by_op.items()}
               for name, by_op in runs.items()}  # fmt: skip
    results["cpu_us"] = {
        f"{name}.{op}": statistics.median(values)
        for name, by_op in cpu.items()
        for op, values in by_op.items()
    }
    return results


def start_minimal(config: Path, log: Path) -> Server:
    port = free_port()
    process = subprocess.Popen(
        pinned(0, [sys.executable, "-m", "tools.minimal_server", str(port), str(config), KEY_ID]),
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=log.open("wb"),
    )  # fmt: skip
    wait_for_ping_post(port)
    return Server(process, port)


def replayed(prepared: dict[str, Any]) -> dict[str, tuple[str, bytes, dict[str, str]]]:
    return {op: (item["path"], item["body"], item["headers"]) for op, item in prepared.items()}


def throughput_section(work: Path, options: argparse.Namespace, data: dict[str, Any]) -> None:
    config, target = deployment(work / "software")
    proxy = start_proxy(config, work / "software.log")
    try:
        prepared = requests_for(target, proxy.port, work, "software")
        answers = {item["path"]: item["answer"] for item in prepared.values()}
        servers = {
            "ceiling": start_ceiling(answers, work),
            "minimal": start_minimal(config, work / "minimal.log"),
            "software": proxy,
        }
        if options.baseline:
            # The same deployment served by another checkout: before/after in one run.
            # Its own metrics and admin ports and pid file: the same deployment, two processes.
            own_metrics = config.with_name("baseline.toml")
            text = config.read_text().replace(f"port = {metrics_port_of(config)}",
                                              f"port = {free_port()}")  # fmt: skip
            text = text.replace(f"port = {admin_port_of(config)}", f"port = {free_port()}")
            pid_file = '[server]\npid_file = "baseline.pid"\n'
            own_metrics.write_text(text.replace("[server]\n", pid_file))
            servers["baseline"] = start_proxy(own_metrics, work / "baseline.log",
                                              source=Path(options.baseline))  # fmt: skip
            prepared_baseline = requests_for(target, servers["baseline"].port, work, "baseline")
            assert all(prepared_baseline[op]["path"] == prepared[op]["path"] for op in OPERATIONS)
        print(f"{', '.join(servers)}, interleaved …", file=sys.stderr)
        try:
            data.update(interleaved(servers, prepared, options.seconds, options.pairs,
                                    tuple(options.operations.split(","))))  # fmt: skip
        finally:
            for name, server in servers.items():
                if name != "software":
                    server.stop()
    finally:
        proxy.stop()
    print("stages …", file=sys.stderr)
    data["micro"] = micro_rows()
    stages = measure_stages(config, replayed(prepared))
    data["stages"] = {op: with_framework(stages[op], data["cpu_us"][f"software.{op}"])
                      for op in measured(data)}  # fmt: skip


def pkcs11_section(work: Path, options: argparse.Namespace, data: dict[str, Any]) -> None:
    """Software against PKCS#11 with its calls on call threads (the default) and with
    ``calls_on_event_loop = true`` (for an in-process module like SoftHSM2), interleaved."""
    soft_config, soft_target = deployment(work / "software-again")
    servers: dict[str, Server] = {}
    prepared: dict[str, dict[str, Any]] = {}
    try:
        servers["software_again"] = start_proxy(soft_config, work / "software-again.log")
        prepared["software_again"] = requests_for(soft_target, servers["software_again"].port,
                                                  work, "software-again")  # fmt: skip
        for name, on_loop in (("pkcs11", False), ("pkcs11_loop", True)):
            config, target = deployment(work / name)
            use_softhsm(config, work / name)
            if on_loop:
                text = config.read_text().replace(
                    "[backends.hsm]\n", "[backends.hsm]\ncalls_on_event_loop = true\n"
                )
                config.write_text(text)
            servers[name] = start_proxy(config, work / f"{name}.log")
            prepared[name] = requests_for(target, servers[name].port, work, name)
        print("software and PKCS#11, interleaved …", file=sys.stderr)
        for name in servers:
            data[name] = {}
        for op in ("encrypt", "decrypt"):
            runs: dict[str, list[float]] = {name: [] for name in servers}
            cpu: dict[str, list[float]] = {name: [] for name in servers}
            for name in servers:
                prepared[name][op]["resign"]()
            for _ in range(options.pairs):
                for name, server in servers.items():
                    item = prepared[name][op]
                    url = f"http://127.0.0.1:{server.port}{item['path']}"
                    before = server.cpu_seconds()
                    rate = wrk(url, item["script"], options.seconds)
                    runs[name].append(rate)
                    cpu[name].append((server.cpu_seconds() - before) / (rate * options.seconds)
                                     * 1e6)  # fmt: skip
            for name in servers:
                data[name][op] = statistics.median(runs[name])
                data.setdefault("cpu_us", {})[f"{name}.{op}"] = statistics.median(cpu[name])
    finally:
        for server in servers.values():
            server.stop()


def workers_section(work: Path, options: argparse.Namespace, data: dict[str, Any]) -> None:
    data["workers"] = {}
    for count in (1, 2):
        config, target = deployment(work / f"workers-{count}")
        proxy = start_proxy(config, work / f"workers-{count}.log", pin=False, workers=count)
        try:
            item = requests_for(target, proxy.port, work, f"workers-{count}")["encrypt"]
            url = f"http://127.0.0.1:{proxy.port}{item['path']}"
            wrk(url, item["script"], 1, threads=2, connections=32, pin=False)
            data["workers"][str(count)] = wrk(url, item["script"], options.seconds, threads=2,
                                              connections=32, pin=False)  # fmt: skip
        finally:
            proxy.stop()


def measured_rate(port: int, target: XksTarget, cacert: Path, rate: int, seconds: int,
                  kms: Path, metrics_port: int, processes: int = 1) -> dict[str, Any]:  # fmt: skip
    """One open-loop run, with the proxy's own histograms over the same run beside it."""
    before, collections = scrape(metrics_port), full_collections(metrics_port)
    result = open_loop(port, target, cacert, rate, seconds, kms, processes)
    result["proxy"] = proxy_figures(before, scrape(metrics_port))
    count, seconds_spent = (b - a for a, b in zip(collections, full_collections(metrics_port),
                                                   strict=True))  # fmt: skip
    result["proxy"]["gc_full"] = {"count": int(count), "ms": round(seconds_spent * 1000, 2)}
    return result


def latency_section(work: Path, options: argparse.Namespace, data: dict[str, Any]) -> None:
    config, target = deployment(work / "tls", "--tls")
    kms = work / "tls" / "kms.json"
    kms.write_text(subprocess.run([str(BIN / "xks-proxy"), "kms-config", "--config",
                                   str(config)], check=True, capture_output=True,
                                  text=True).stdout)  # fmt: skip
    metrics_port = metrics_port_of(config)
    proxy = start_proxy(config, work / "tls.log", "https")
    cacert = work / "tls" / "tls" / "server.pem"
    memory: dict[str, Any] = {"start_kib": proxy.rss_kib()[0]}
    data["latency"] = {}
    try:
        for rate in RATES:
            print(f"open loop at {rate}/s …", file=sys.stderr)
            result = measured_rate(proxy.port, target, cacert, rate, options.latency_seconds,
                                   kms, metrics_port)  # fmt: skip
            if result["generator"]["cpu_utilisation"] >= SATURATED_CPU_SHARE:
                # The generator's queue is in these figures: measure again with more generator
                # processes and keep that row; the one-process figures stay beside it. (Late
                # sending with a low CPU share is the machine's doing: more processes on the
                # same core would not help, and the row says SATURATED instead.)
                why = "; ".join(result["generator"]["saturated_by"])
                print(f"  generator saturated ({why}), again with {GENERATOR_PROCESSES} "
                      "processes …", file=sys.stderr)  # fmt: skip
                more = measured_rate(proxy.port, target, cacert, rate, options.latency_seconds,
                                     kms, metrics_port, GENERATOR_PROCESSES)  # fmt: skip
                more["one_process"] = {k: result[k] for k in ("latency_ms", "generator")}
                result = more
            data["latency"][rate] = result
        memory["peak_kib"] = proxy.rss_kib()[1]
        memory["soak_before_kib"] = proxy.rss_kib()[0]
        memory["soak_rate"], memory["soak_seconds"] = 900, options.soak_seconds
        print("soak …", file=sys.stderr)
        open_loop(proxy.port, target, cacert, 900, options.soak_seconds, kms)
        memory["soak_after_kib"] = proxy.rss_kib()[0]
        data["memory"] = memory
    finally:
        proxy.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true",
                        help="ratios and stages only, short runs (for iterating)")  # fmt: skip
    parser.add_argument("--seconds", type=int, help="per throughput run (10; quick 3)")
    parser.add_argument("--pairs", type=int, help="interleaved rounds (3; quick 2)")
    parser.add_argument("--latency-seconds", type=int, default=20, help="per open-loop rate")
    parser.add_argument("--soak-seconds", type=int, default=60)
    parser.add_argument("--operations", default=",".join(OPERATIONS),
                        help="quick mode: only these (comma-separated)")  # fmt: skip
    parser.add_argument("--baseline", help="also run the proxy from this source tree "
                        "(e.g. `git archive main`), interleaved: before and after")  # fmt: skip
    parser.add_argument("--report-only", action="store_true",
                        help="re-render benchmarks.md from benchmarks.json")  # fmt: skip
    parser.add_argument("--out", help="where to write the report (docs/; quick: print only)")
    options = parser.parse_args()
    if options.report_only:
        docs = Path(options.out or ROOT / "docs")
        (docs / "benchmarks.md").write_text(
            report(json.loads((docs / "benchmarks.json").read_text()))
        )
        return
    options.seconds = options.seconds or (3 if options.quick else 10)
    options.pairs = options.pairs or (2 if options.quick else 3)
    data: dict[str, Any] = {"seconds": options.seconds, "pairs": options.pairs,
                            "quick": options.quick, "machine": machine()}  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="xks-bench-") as scratch:
        work = Path(scratch)
        throughput_section(work, options, data)
        if not options.quick:
            for section in (pkcs11_section, workers_section, latency_section):
                try:
                    section(work, options, data)
                except (RuntimeError, OSError, subprocess.SubprocessError) as error:
                    # On a shared machine a server can miss its start-up window: the sections
                    # measured so far are still worth writing; the failure is printed.
                    print(f"{section.__name__} failed: {error}", file=sys.stderr)
    out = Path(options.out) if options.out else (None if options.quick else ROOT / "docs")
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        if "latency" in data:
            plot(data["latency"], out / "latency.png")
        (out / "benchmarks.md").write_text(report(data))
        (out / "benchmarks.json").write_text(json.dumps(data, indent=2, default=str) + "\n")
    print(report(data))


if __name__ == "__main__":
    main()
