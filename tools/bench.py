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
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from tools.bench_report import (
    measured,
    plot,
    report,
)
from tools.bench_servers import (
    BIN,
    GENERATOR_PROCESSES,
    OPERATIONS,
    PROXY_CORE,
    RATES,
    ROOT,
    Server,
    admin_port_of,
    calls_on_event_loop,
    deployment,
    free_port,
    full_collections,
    machine,
    metrics_port_of,
    open_loop,
    pinned,
    proxy_figures,
    replayed,
    requests_for,
    scrape,
    start_ceiling,
    start_minimal,
    start_proxy,
    use_softhsm,
    wrk,
)
from tools.micro_ab import rows as micro_rows
from tools.sched_probe import core_times, steal_share
from tools.stages import measure as measure_stages
from tools.stages import with_framework
from xks_proxy.loadtest.stats import SATURATED_CPU_SHARE
from xks_proxy.loadtest.workload import XksTarget


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
    """Software against PKCS#11 with its calls on call threads (``calls_on_event_loop =
    false``) and with the default ``"auto"`` (on the event loop for SoftHSM2), interleaved."""
    soft_config, soft_target = deployment(work / "software-again")
    servers: dict[str, Server] = {}
    prepared: dict[str, dict[str, Any]] = {}
    try:
        servers["software_again"] = start_proxy(soft_config, work / "software-again.log")
        prepared["software_again"] = requests_for(soft_target, servers["software_again"].port,
                                                  work, "software-again")  # fmt: skip
        for name, placement in (("pkcs11", "false"), ("pkcs11_loop", '"auto"')):
            config, target = deployment(work / name)
            use_softhsm(config, work / name)
            text = config.read_text().replace(
                "[backends.hsm]\n", f"[backends.hsm]\ncalls_on_event_loop = {placement}\n"
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
        # "auto" moves the calls to threads after one slow call: say so if it did here.
        auto_config = work / "pkcs11_loop" / "xks-proxy.toml"
        data["pkcs11_loop_held"] = calls_on_event_loop(metrics_port_of(auto_config))
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
    times = core_times(PROXY_CORE)
    result = open_loop(port, target, cacert, rate, seconds, kms, processes)
    result["proxy"] = proxy_figures(before, scrape(metrics_port))
    result["proxy"]["steal_share"] = round(steal_share(times, core_times(PROXY_CORE)), 4)
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
    # The machine's own wake-up lateness on the proxy's core, the floor under the tails below.
    data["machine_lag"] = json.loads(subprocess.run(
        pinned(PROXY_CORE, [sys.executable, "-m", "tools.sched_probe", "10"]), cwd=ROOT,
        check=True, capture_output=True, text=True).stdout)  # fmt: skip
    try:
        for rate in RATES:
            print(f"open loop at {rate}/s …", file=sys.stderr)
            result = measured_rate(proxy.port, target, cacert, rate, options.latency_seconds,
                                   kms, metrics_port)  # fmt: skip
            if result["generator"]["cpu_utilisation"] >= SATURATED_CPU_SHARE:
                # The generator's queue is in these figures: measure again with more generator
                # processes and keep that row; the one-process figures stay beside it. (Late
                # sending with a low CPU share is epoll's millisecond, asyncio rounding each wait
                # up to it, and beyond that the machine's doing: more processes on the same core
                # help with neither, and the row says SATURATED instead.)
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


def appended_sections(page: str, rendered: str) -> str:
    """The sections of ``page`` that ``make bench``'s other tools appended (authorization,
    key store scale): a re-rendered report keeps them, in their order."""
    own = {line for line in rendered.splitlines() if line.startswith("## ")}
    kept = [
        section for section in page.split("\n## ")[1:] if f"## {section.splitlines()[0]}" not in own
    ]
    return "".join(f"\n## {section}" for section in kept)


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
        rendered = report(json.loads((docs / "benchmarks.json").read_text()))
        page = docs / "benchmarks.md"
        page.write_text(rendered + appended_sections(page.read_text(), rendered))
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
