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
import subprocess
import sys
import tempfile
import time
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
KEY_ID = "key-both"


def pinned(core: int, command: list[str]) -> list[str]:
    if os.cpu_count() and os.cpu_count() >= 2 and shutil.which("taskset"):  # type: ignore[operator]
        return ["taskset", "-c", str(core), *command]
    return command


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_for_ping(port: int, scheme: str = "http") -> None:
    import ssl

    context = ssl._create_unverified_context() if scheme == "https" else None  # noqa: S323
    deadline = time.monotonic() + 30
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

    def stop(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        self.process.wait(timeout=60)


def start_proxy(config: Path, log: Path, scheme: str = "http") -> Server:
    port = free_port()
    process = subprocess.Popen(
        pinned(0, [str(BIN / "xks-proxy"), "serve", "--config", str(config), "--port",
                   str(port)]),
        stdout=subprocess.DEVNULL, stderr=log.open("wb"), env=os.environ.copy(),
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
        except OSError:
            time.sleep(0.1)
    raise RuntimeError("the ceiling server did not start")


def lua_script(body: bytes, headers: dict[str, str], directory: Path, name: str) -> Path:
    lines = ['wrk.method = "POST"', f"wrk.body = [==[{body.decode()}]==]"]
    lines += [f'wrk.headers["{k}"] = "{v}"' for k, v in headers.items() if k.lower() != "host"]
    path = directory / f"{name}.lua"
    path.write_text("\n".join(lines) + "\n")
    return path


def wrk(url: str, script: Path, seconds: int, connections: int = 16) -> float:
    result = subprocess.run(
        pinned(1, ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "-s", str(script), url]),
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
                    "--port", "0", "--metrics-port", str(free_port()), *extra],
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
            "script": lua_script(body, headers, directory, f"{tag}-{operation}"),
        }
    return prepared


def throughput(port: int, prepared: dict[str, Any], seconds: int) -> dict[str, float]:
    results = {}
    for operation, item in prepared.items():
        url = f"http://127.0.0.1:{port}{item['path']}"
        wrk(url, item["script"], 2)  # warm-up
        results[operation] = wrk(url, item["script"], seconds)
    return results


def open_loop(port: int, target: XksTarget, cacert: Path, rate: int, seconds: int,
              kms: Path) -> dict[str, Any]:  # fmt: skip
    result = subprocess.run(
        pinned(1, [str(BIN / "xks-proxy"), "loadtest", "--url", f"https://127.0.0.1:{port}",
                   "--kms-config", str(kms), "--key-id", target.key_id, "--rate", str(rate),
                   "--duration", str(seconds), "--connections", "64", "--cacert", str(cacert),
                   "--json"]),
        capture_output=True, text=True, timeout=seconds + 120, check=False,
    )  # fmt: skip
    report: dict[str, Any] = json.loads(result.stdout)
    return report


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


def report(data: dict[str, Any]) -> str:
    ceiling, soft, hsm = data["ceiling"], data["software"], data["pkcs11"]
    lines = [
        "# Benchmarks",
        "",
        f"Made by `make bench` ({data['seconds']} s per throughput run) on "
        f"{data['machine']['date']}. Ratios are taken within this one run; the machine is "
        "shared, so absolute numbers move between runs more than ratios do.",
        "",
        "## Throughput (closed loop, `wrk -t1 -c16`, plain HTTP, 4 KiB plaintext, 64 B AAD)",
        "",
        "| operation | ceiling req/s | proxy (software) req/s | ratio | proxy (PKCS#11, SoftHSM2)"
        " req/s | ratio to ceiling | ratio to software |",
        "|---|---|---|---|---|---|---|",
    ]
    for op in OPERATIONS:
        lines.append(
            f"| {NAMES[op]} | {ceiling[op]:.0f} | {soft[op]:.0f} | {soft[op] / ceiling[op]:.2f} "
            f"| {hsm[op]:.0f} | {hsm[op] / ceiling[op]:.2f} | {hsm[op] / soft[op]:.2f} |"
        )
    lines += [
        "",
        "The ceiling is a bare aiohttp endpoint that reads the same request and answers a "
        "pre-built body of the same size as the proxy's answer; the proxy runs one worker with "
        "metrics and the audit log on. Targets: Encrypt ≥ 0.8× the ceiling; PKCS#11 ≥ 0.6× the "
        "software backend.",
        "",
        "## Open-loop latency (TLS 1.3, keep-alive, Encrypt 4 KiB, `xks-proxy loadtest`)",
        "",
        "| offered req/s | achieved | p50 ms | p99 ms | p99.9 ms | max ms | over 250 ms | errors |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for rate, result in data["latency"].items():
        latency = result["latency_ms"]
        lines.append(
            f"| {rate} | {result['achieved_rate']} | {latency['p50']} | {latency['p99']} | "
            f"{latency['p99.9']} | {latency['max']} | {result['over_250ms_share'] * 100:.3f} % "
            f"| {result['errors'] or 'none'} |"
        )
    memory = data["memory"]
    lines += [
        "",
        "Latency is measured from each request's scheduled send time (no coordinated omission). "
        "Target at 1,800 req/s: p99 ≤ 5 ms, p99.9 ≤ 20 ms, nothing over 250 ms, no error.",
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
        "## Machine",
        "",
        *[f"- {key}: {value}" for key, value in data["machine"].items()],
        "",
    ]
    lines += HISTORY
    return "\n".join(lines)


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
    "",
    "The remaining gap is spread thin (SigV4 about 23 µs, parsing and validation about 30 µs, "
    "the service and AES-GCM about 32 µs, audit about 12 µs per request in-process, against "
    "about 110 µs for the whole ceiling request): the 0.8× target is not met, and the next "
    "steps are fewer awaits per request and a leaner request path inside aiohttp.",
    "",
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=int, default=10, help="per throughput run")
    parser.add_argument("--latency-seconds", type=int, default=20, help="per open-loop rate")
    parser.add_argument("--soak-seconds", type=int, default=60)
    parser.add_argument("--out", default=str(ROOT / "docs"))
    options = parser.parse_args()
    out = Path(options.out)
    out.mkdir(parents=True, exist_ok=True)
    data: dict[str, Any] = {"seconds": options.seconds, "machine": machine()}
    with tempfile.TemporaryDirectory(prefix="xks-bench-") as scratch:
        work = Path(scratch)
        config, target = deployment(work / "software")
        proxy = start_proxy(config, work / "software.log")
        prepared = requests_for(target, proxy.port, work, "software")
        print("proxy, software backend …", file=sys.stderr)
        data["software"] = throughput(proxy.port, prepared, options.seconds)
        proxy.stop()
        ceiling = start_ceiling({item["path"]: item["answer"] for item in prepared.values()},
                                work)  # fmt: skip
        print("ceiling …", file=sys.stderr)
        data["ceiling"] = throughput(ceiling.port, prepared, options.seconds)
        ceiling.stop()

        config, target = deployment(work / "pkcs11")
        use_softhsm(config, work / "pkcs11")
        proxy = start_proxy(config, work / "pkcs11.log")
        print("proxy, PKCS#11 backend …", file=sys.stderr)
        data["pkcs11"] = throughput(proxy.port, requests_for(target, proxy.port, work, "pkcs11"),
                                    options.seconds)  # fmt: skip
        proxy.stop()

        config, target = deployment(work / "tls", "--tls")
        kms = work / "tls" / "kms.json"
        kms.write_text(subprocess.run([str(BIN / "xks-proxy"), "kms-config", "--config",
                                       str(config)], check=True, capture_output=True,
                                      text=True).stdout)  # fmt: skip
        proxy = start_proxy(config, work / "tls.log", "https")
        cacert = work / "tls" / "tls" / "server.pem"
        memory: dict[str, Any] = {"start_kib": proxy.rss_kib()[0]}
        data["latency"] = {}
        for rate in RATES:
            print(f"open loop at {rate}/s …", file=sys.stderr)
            data["latency"][rate] = open_loop(proxy.port, target, cacert, rate,
                                              options.latency_seconds, kms)  # fmt: skip
        memory["peak_kib"] = proxy.rss_kib()[1]
        memory["soak_before_kib"] = proxy.rss_kib()[0]
        memory["soak_rate"], memory["soak_seconds"] = 900, options.soak_seconds
        print("soak …", file=sys.stderr)
        open_loop(proxy.port, target, cacert, 900, options.soak_seconds, kms)
        memory["soak_after_kib"] = proxy.rss_kib()[0]
        data["memory"] = memory
        proxy.stop()
    plot(data["latency"], out / "latency.png")
    (out / "benchmarks.md").write_text(report(data))
    (out / "benchmarks.json").write_text(json.dumps(data, indent=2, default=str) + "\n")
    print(report(data))


if __name__ == "__main__":
    main()
