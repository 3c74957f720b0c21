"""``xks-proxy loadtest``: arguments, the run, the report and the SLO verdict.

Each operation's request is signed once a second (X-Amz-Date's resolution) and replayed within
that second; a proxy accepts a signature for five minutes (xks-spec §6.2), so every request is
one the proxy verifies in full, at a signing cost to the generator of a few per second. The
report gives the generator's own CPU share, send lag and loop lag beside the latencies, and says
when the generator was saturated (then its queue is in the latencies: add ``--processes``).
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

from xks_proxy.loadtest.runner import LoadSpec, freeze_start_up_objects, run
from xks_proxy.loadtest.stats import SATURATED_CPU_SHARE
from xks_proxy.loadtest.workload import KMS_OPERATIONS, KmsTarget, XksTarget, parse_mix
from xks_proxy.sigv4 import Credential

EXIT_SLO_MISSED = 1


def _target(args: argparse.Namespace) -> XksTarget:
    if args.kms_config:
        document = json.loads(Path(args.kms_config).read_text())
        credential = document["XksProxyAuthenticationCredential"]
        uri_path = document["XksProxyUriPath"]
        access_key_id, secret = credential["AccessKeyId"], credential["RawSecretAccessKey"]
    else:
        if not (args.uri_path and args.access_key_id):
            raise ValueError("give --kms-config, or --uri-path and --access-key-id")
        secret = os.environ.get(args.secret_env, "")
        if not secret:
            raise ValueError(f"set the secret in ${args.secret_env}")
        uri_path, access_key_id = args.uri_path, args.access_key_id
    return XksTarget(
        url=args.url.rstrip("/"),
        uri_path=uri_path,
        region=args.region,
        credential=Credential(access_key_id, secret),
        key_id=args.key_id or "",
    )


def spec_from(args: argparse.Namespace) -> LoadSpec:
    target: XksTarget | KmsTarget
    if args.kms_url:
        mix = parse_mix(args.mix, KMS_OPERATIONS)
        if not args.key_id:
            raise ValueError("--key-id (a KMS key id, ARN or alias) is needed with --kms-url")
        # Any credentials do for the emulator; AWS_* variables are used when set.
        target = KmsTarget(args.kms_url.rstrip("/"), args.key_id, args.region, Credential(
            os.environ.get("AWS_ACCESS_KEY_ID", "AKIDLOADTEST"),
            os.environ.get("AWS_SECRET_ACCESS_KEY", "loadtest")))  # fmt: skip
    else:
        if not args.url:
            raise ValueError("give --url (an XKS proxy) or --kms-url (the KMS emulator)")
        mix = parse_mix(args.mix)
        target = _target(args)
        if not target.key_id and any(name != "health" for name, _ in mix):
            raise ValueError("--key-id is needed for encrypt, decrypt and metadata")
    if args.rate <= 0 or args.duration <= 0:
        raise ValueError("--rate and --duration must be positive")
    return LoadSpec(
        target=target,
        mix=mix,
        rate=args.rate,
        duration=args.duration,
        connections=args.connections,
        plaintext_bytes=args.plaintext_bytes,
        aad_bytes=args.aad_bytes,
        timeout=args.timeout,
        cacert=args.cacert,
        insecure=args.insecure,
        client_cert=(args.cert, args.key) if args.cert else None,
        processes=args.processes,
        warm_up=args.warm_up,
        progress=not args.json,
    )


def verdict(summary: dict[str, Any], args: argparse.Namespace) -> list[str]:
    """The SLOs the run missed, in words."""
    missed = []
    if args.slo_p99_ms is not None and summary["latency_ms"]["p99"] > args.slo_p99_ms:
        missed.append(f"p99 {summary['latency_ms']['p99']} ms > {args.slo_p99_ms} ms")
    if args.max_error_rate is not None and summary["error_rate"] > args.max_error_rate:
        missed.append(f"error rate {summary['error_rate']} > {args.max_error_rate}")
    return missed


def render(summary: dict[str, Any], spec: LoadSpec) -> str:
    latency = summary["latency_ms"]
    lines = [
        f"target        {spec.target.url}{getattr(spec.target, 'uri_path', '')}  mix {spec.mix}",
        f"offered       {spec.rate:g} req/s for {spec.duration:g} s "
        f"({summary['scheduled']} requests, {spec.connections} connections, "
        f"{spec.processes} process(es))",
        f"achieved      {summary['achieved_rate']} req/s ({summary['completed']} completed)",
        "latency (ms, from each request's scheduled time)",
        "              " + "  ".join(f"{k}={v}" for k, v in latency.items()),
        f"over 250 ms   {summary['over_250ms_share'] * 100:.3f} %",
        f"errors        {summary['errors'] or 'none'} (rate {summary['error_rate']})",
        _generator_line(summary["generator"]),
    ]
    return "\n".join(lines)


def _generator_line(generator: dict[str, Any]) -> str:
    line = (
        f"generator     {generator['cpu_utilisation'] * 100:.0f} % of a core (busiest of "
        f"{generator['processes']} process(es), {generator['cpu_us_per_request']} µs/request), "
        f"send lag p99 {generator['send_lag_ms']['p99']} ms, loop lag p99 "
        f"{generator['loop_lag_ms']['p99']} ms"
    )
    if generator["saturated"]:
        remedy = (
            "add --processes (on cores the target does not use)"
            if generator["cpu_utilisation"] >= SATURATED_CPU_SHARE
            else "its CPU share was low, so other work on its core delayed it"
        )
        line += (f"\n              SATURATED ({'; '.join(generator['saturated_by'])}): the "
                 f"generator's own delay is in these latencies; {remedy}")  # fmt: skip
    return line


def main(args: argparse.Namespace) -> int:
    spec = spec_from(args)
    freeze_start_up_objects()
    summary = run(spec).summary()
    missed = verdict(summary, args)
    if args.json:
        print(json.dumps({**summary, "slo_missed": missed}, indent=2))
    else:
        print(render(summary, spec))
        for miss in missed:
            print(f"SLO missed: {miss}")
    return EXIT_SLO_MISSED if missed else 0
