"""The cost of secondary authorization per request: uncached (one cedarpy decision) and
amortized over a realistic mix through the decision cache.

The policy is the README's three examples together (a baseline permit and three forbids). The
mix draws requests from a pool of distinct inputs (every combination of principals, KMS
operations, via services, VPC endpoints and keys) with Zipf-like weights, as real traffic
repeats a few callers and keys: the amortized cost is the time of ``Authorizer.check`` over all
requests, misses included, divided by their number. ``measure`` returns the numbers and
``report`` a Markdown section, so ``tools/bench.py`` can add them to docs/benchmarks.md;
``python -m tools.authz_bench [--append docs/benchmarks.md]`` prints it (``make bench``
appends it).
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import random
import time
from dataclasses import dataclass
from pathlib import Path

from xks_proxy.authz.authorizer import Authorizer, PolicyDeniedError
from xks_proxy.authz.policy import parse_policies
from xks_proxy.authz.request import AuthzInput
from xks_proxy.model import RequestMetadata

POLICY = """
@id("allow-the-rest")
permit (principal, action, resource);

@id("key-0-only-through-ebs")
forbid (principal, action, resource == Xks::Key::"key-0")
unless { context.kmsViaService == "ebs" };

@id("decrypt-only-from-vpce")
forbid (principal, action in Xks::Action::"Decrypt", resource)
unless { context.awsSourceVpce == "vpce-0123456789abcdef0" || context.awsSourceVpce == "" };

@id("auditor-may-not-decrypt")
forbid (
  principal == Aws::Principal::"arn:aws:iam::111122223333:role/auditor",
  action in Xks::Action::"Decrypt",
  resource
);
"""
PRINCIPALS = [f"arn:aws:iam::111122223333:role/app-{n}" for n in range(4)] + [
    "arn:aws:iam::111122223333:role/auditor"
]
OPERATIONS = [
    ("Encrypt", "Encrypt"),
    ("GenerateDataKey", "Encrypt"),
    ("Decrypt", "Decrypt"),
    ("ReEncrypt", "Decrypt"),
]
VIA_SERVICES = ["", "ebs", "s3"]
VPC_ENDPOINTS = ["", "vpce-0123456789abcdef0"]
KEYS = [f"key-{n}" for n in range(3)]
STORE = "bench"


@dataclass(frozen=True)
class AuthzCost:
    requests: int
    distinct_inputs: int
    uncached_us: float
    amortized_us: float
    hit_rate: float


@dataclass(frozen=True)
class Request:
    """What the service hands to ``Authorizer.check``."""

    key_id: str
    xks_operation: str
    metadata: RequestMetadata


def _request(principal: str, operation: tuple[str, str], via: str, vpce: str, key: str) -> Request:
    kms_operation, xks_operation = operation
    metadata = RequestMetadata(
        kms_request_id="bench",
        kms_operation=kms_operation,
        aws_principal_arn=principal,
        kms_key_arn=f"arn:aws:kms:us-east-1:111122223333:key/{key}",
        kms_via_service=via or None,
        aws_source_vpce=vpce or None,
    )
    return Request(key, xks_operation, metadata)


def pool() -> list[Request]:
    combos = itertools.product(PRINCIPALS, OPERATIONS, VIA_SERVICES, VPC_ENDPOINTS, KEYS)
    return [_request(*combo) for combo in combos]


def mix(inputs: list[Request], count: int, seed: int = 13) -> list[Request]:
    """``count`` requests drawn with Zipf-like weights (the n-th input weighs 1/n)."""
    rng = random.Random(seed)  # noqa: S311 (a reproducible mix, not a secret)
    order = inputs[:]
    rng.shuffle(order)
    weights = [1 / rank for rank in range(1, len(order) + 1)]
    return rng.choices(order, weights=weights, k=count)


def _check(authorizer: Authorizer, request: Request) -> None:
    with contextlib.suppress(PolicyDeniedError):
        authorizer.check(request.key_id, request.xks_operation, request.metadata)


def measure(requests: int = 100_000) -> AuthzCost:
    authorizer = Authorizer(STORE, parse_policies(POLICY, Path("bench.cedar")))
    inputs = pool()
    uncached_runs = max(len(inputs), requests // 20)
    started = time.perf_counter()
    for request in itertools.islice(itertools.cycle(inputs), uncached_runs):
        authorizer.evaluate(
            AuthzInput.of(STORE, request.key_id, request.xks_operation, request.metadata)
        )
    uncached = (time.perf_counter() - started) / uncached_runs
    traffic = mix(inputs, requests)
    started = time.perf_counter()
    for request in traffic:
        _check(authorizer, request)
    amortized = (time.perf_counter() - started) / requests
    info = authorizer.decide.cache_info()
    return AuthzCost(
        requests=requests,
        distinct_inputs=len(set(traffic)),
        uncached_us=uncached * 1e6,
        amortized_us=amortized * 1e6,
        hit_rate=info.hits / max(1, info.hits + info.misses),
    )


def report(cost: AuthzCost) -> str:
    return "\n".join(
        [
            "## Secondary authorization (Cedar)",
            "",
            "Per request, in-process (`python -m tools.authz_bench`): the README's example "
            "policies, a Zipf-like mix of "
            f"{cost.distinct_inputs} distinct inputs over {cost.requests:,} requests.",
            "",
            "| | µs per request |",
            "|---|---|",
            f"| uncached (one cedarpy decision) | {cost.uncached_us:.1f} |",
            f"| amortized through the decision cache ({cost.hit_rate:.1%} hits) "
            f"| {cost.amortized_us:.1f} |",
            "",
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=100_000)
    parser.add_argument("--append", metavar="FILE", help="append the section to FILE")
    args = parser.parse_args()
    section = report(measure(args.requests))
    print(section)
    if args.append:
        with Path(args.append).open("a", encoding="utf-8") as out:
            out.write("\n" + section)


if __name__ == "__main__":
    main()
