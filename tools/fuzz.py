"""``make fuzz``: the property-test targets at scale, for release checks.

Runs the fuzz targets of tests/fuzz_targets.py (request-body parsing and SigV4 verification) in
rounds of fresh random inputs until the time is up, then prints how many inputs ran. Any
exception other than the project's own ``XksError`` stops the run: hypothesis shrinks the input
to a minimal one and prints it, and the command exits 1.

Hypothesis rather than atheris: it needs no compiler or native wheel, and it reuses the
structured strategies the property tests use, which reach past the first check far more often
than byte-level mutation does.

    python -m tools.fuzz --seconds 600
"""

from __future__ import annotations

import argparse
import sys
import time
import traceback
from collections import Counter
from collections.abc import Callable

from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from tests import fuzz_targets

# Examples per round: small enough that a run ends within seconds of the time asked for.
ROUND = 300
_counts: Counter[str] = Counter()


def _bounded(examples: int) -> settings:
    return settings(
        max_examples=examples,
        deadline=None,
        database=None,
        phases=(Phase.generate, Phase.shrink),
        suppress_health_check=list(HealthCheck),
        print_blob=True,
    )


def _parse_bodies(examples: int) -> None:
    @_bounded(examples)
    @given(st.sampled_from(sorted(fuzz_targets.PARSERS)), fuzz_targets.request_bodies())
    def run(operation: str, body: bytes) -> None:
        _counts["parse"] += 1
        fuzz_targets.parse_body(operation, body)

    run()


def _verify_tampered(examples: int) -> None:
    @_bounded(examples)
    @given(fuzz_targets.tampered_requests(), fuzz_targets.wire_text)
    def run(headers: list[tuple[str, str]], query: str) -> None:
        _counts["verify"] += 1
        fuzz_targets.verify_request(headers)
        fuzz_targets.verify_request(headers, query=query)

    run()


TARGETS: dict[str, Callable[[int], None]] = {
    "parse": _parse_bodies,
    "verify": _verify_tampered,
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60.0, help="how long to run (60)")
    parser.add_argument("--target", choices=sorted(TARGETS), action="append", help="default: all")
    args = parser.parse_args(argv)
    targets = args.target or sorted(TARGETS)
    deadline = time.monotonic() + args.seconds
    started = time.monotonic()
    rounds = 0
    try:
        while time.monotonic() < deadline:
            for name in targets:
                TARGETS[name](ROUND)
            rounds += 1
    except Exception as error:  # any escape is the finding this tool reports
        # The traceback's notes hold hypothesis's minimal falsifying input.
        traceback.print_exception(error)
        print(
            f"fuzz: FAILED after {sum(_counts.values())} inputs: "
            f"{type(error).__name__} escaped (the minimal input is printed above)",
            file=sys.stderr,
        )
        return 1
    elapsed = time.monotonic() - started
    detail = ", ".join(f"{name} {_counts[name]}" for name in targets)
    print(
        f"fuzz: {sum(_counts.values())} inputs in {elapsed:.0f} s ({detail}), {rounds} rounds; "
        "only project errors (XksError) escaped"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
