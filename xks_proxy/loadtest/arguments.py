"""``xks-proxy loadtest``'s description and options: apart from the generator (command.py and
what it imports: httptools, multiprocessing), so building the CLI's parser for any other command,
``serve`` among them, does not load it."""

from __future__ import annotations

import argparse

DESCRIPTION = (
    "Open-loop load test: requests leave on a fixed schedule and latency is measured from each "
    "request's scheduled time. Each operation's request is signed once a second and replayed "
    "within it (a signature is valid for 5 minutes). The report includes the generator's CPU "
    "share, send lag and loop lag, and says when the generator, not the target, was the limit."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--url", help="proxy endpoint, e.g. https://xks.example.com")
    parser.add_argument("--kms-url", help="instead of --url: the KMS emulator, to measure the "
                        "whole chain (mix of encrypt, decrypt, generate-data-key)")  # fmt: skip
    parser.add_argument("--kms-config", help="the JSON from `xks-proxy kms-config` (URI path and "
                        "credential)")  # fmt: skip
    parser.add_argument("--uri-path", help="the key store's URI path (without --kms-config)")
    parser.add_argument("--access-key-id", help="SigV4 access key id (without --kms-config)")
    parser.add_argument(
        "--secret-env",
        default="XKS_SECRET_ACCESS_KEY",
        help="environment variable holding the secret (without --kms-config)",
    )
    parser.add_argument("--region", default="us-east-1", help="the key store's region")
    parser.add_argument("--key-id", help="external key id (needed unless the mix is health only)")
    parser.add_argument("--mix", default="encrypt", help="e.g. encrypt=70,decrypt=20,health=10")
    parser.add_argument("--plaintext-bytes", type=int, default=4096)
    parser.add_argument("--aad-bytes", type=int, default=64)
    parser.add_argument("--rate", type=float, default=100, help="requests per second (open loop)")
    parser.add_argument("--duration", type=float, default=10, help="seconds")
    parser.add_argument("--connections", type=int, default=32, help="at most this many at once")
    parser.add_argument("--processes", type=int, default=1,
                        help="generator processes sharing the rate (when the report says the "
                        "generator was saturated)")  # fmt: skip
    parser.add_argument("--no-warm-up", dest="warm_up", action="store_false",
                        help="open connections as requests need them, not all before the first "
                        "request (measures the target's start-up: a TLS handshake per "
                        "connection at once)")  # fmt: skip
    parser.add_argument("--timeout", type=float, default=10, help="per request, seconds")
    parser.add_argument("--cacert", help="CA bundle that signed the proxy's certificate")
    parser.add_argument("--insecure", action="store_true", help="do not verify the certificate")
    parser.add_argument("--cert", help="client certificate (mutual TLS)")
    parser.add_argument("--key", help="client certificate's private key")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    parser.add_argument("--slo-p99-ms", type=float, help="exit 1 when p99 is above this")
    parser.add_argument("--max-error-rate", type=float, help="exit 1 when errors are above this "
                        "share (0.001 = 0.1 %%)")  # fmt: skip
