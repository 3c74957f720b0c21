"""The per-stage cost of one XKS request, measured in process (part of ``make bench``).

Each stage of the endpoint's work runs on its own in a tight loop on the request the benchmark
replays: SigV4 verification, parsing (JSON, duplicate check, the typed request, the audit
metadata, once), the service with the software backend (minus its metric updates), the answer
(JSON and its HTTP bytes, as web/inline.py writes them), the metrics one request updates, and
its audit line (written to a scratch file). "framework" is what is left of the proxy's CPU time
per request under ``wrk`` (its /proc CPU time over the requests it answered) once the stages
are taken away: aiohttp's HTTP parsing, the event loop and transport, the handler's own glue.
In-process loops run with warm caches, so the stages are a lower bound and framework also holds
what a real request loses to colder caches.
"""

from __future__ import annotations

import asyncio
import tempfile
import timeit
from collections.abc import Callable, Coroutine
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

from xks_proxy import model, sigv4
from xks_proxy.audit import AuditLog, AuditRecord
from xks_proxy.config import load_config
from xks_proxy.runtime import ProxyRuntime
from xks_proxy.service import KeyStore
from xks_proxy.web import routing
from xks_proxy.web.inline import encode_answer
from xks_proxy.web.responses import json_answer

STAGES = ("sigv4", "parsing", "backend", "answer", "metrics", "audit")
# Backend calls (each one histogram observation) per operation on the software backend.
BACKEND_CALLS = {"encrypt": 2, "decrypt": 2, "metadata": 1, "health": 0}


def _run(coroutine: Coroutine[Any, Any, Any]) -> Any:
    """Drive a coroutine that finishes without suspending (the software backend's do)."""
    try:
        coroutine.send(None)
    except StopIteration as done:
        return done.value
    coroutine.close()
    raise RuntimeError("the operation suspended; stages measure only in-process backends")


def _microseconds(action: Callable[[], object], number: int = 2000) -> float:
    return min(timeit.repeat(action, number=number, repeat=5)) / number * 1e6


def _answer(result: dict[str, Any]) -> bytes:
    return encode_answer(json_answer(result))


def _parse(route: routing.Route, body: bytes) -> tuple[dict[str, Any], Any]:
    # The audit record takes the parsed request's metadata (model.audit_metadata only when the
    # request fails before it is validated).
    document = model.load_json_object(body)
    match route.operation:
        case routing.ENCRYPT:
            return document, model.parse_encrypt(document)
        case routing.DECRYPT:
            return document, model.parse_decrypt(document)
        case routing.GET_KEY_METADATA:
            return document, model.parse_key_metadata(document)
    return document, model.parse_health(document)


def _operate(runtime: ProxyRuntime, route: routing.Route, parsed: Any) -> Any:
    service, store = runtime.service, route.key_store
    key_id = route.raw_key_id or ""
    match route.operation:
        case routing.ENCRYPT:
            return _run(service.encrypt(store, key_id, parsed))
        case routing.DECRYPT:
            return _run(service.decrypt(store, key_id, parsed))
        case routing.GET_KEY_METADATA:
            return _run(service.get_key_metadata(store, key_id, parsed))
    return service.health(store, parsed)


async def _measure(
    config_path: Path, requests: dict[str, tuple[str, bytes, dict[str, str]]]
) -> dict[str, dict[str, float]]:
    runtime = ProxyRuntime(load_config(config_path))
    await runtime.open()
    metrics = runtime.metrics
    results: dict[str, dict[str, float]] = {}
    try:
        with tempfile.TemporaryDirectory(prefix="xks-stages-") as scratch:
            audit = AuditLog(str(Path(scratch) / "audit.log"))
            for operation, (path, body, headers) in requests.items():
                route = routing.resolve(runtime.key_stores, path)
                store: KeyStore = route.key_store
                # Verified as at its signing time: a long benchmark outlasts the 5-minute skew.
                now = datetime.strptime(headers["X-Amz-Date"], sigv4.AMZ_DATE_FORMAT).replace(
                    tzinfo=UTC
                )
                header_items = list(headers.items())

                def verify(
                    store: KeyStore = store,
                    items: Any = header_items,
                    path: str = path,
                    body: bytes = body,
                    now: Any = now,
                ) -> None:
                    sigv4.verify(method="POST", path=path, headers=items, body=body,
                                 credentials=store.credentials, region=store.config.region,
                                 now=now)  # fmt: skip

                _, parsed = _parse(route, body)
                result = _operate(runtime, route, parsed)
                record = AuditRecord(route.operation, store.name, route.raw_key_id, "AKIA",
                                     parsed.metadata)  # fmt: skip
                backend_observe = _microseconds(
                    lambda: metrics.observe_backend("local", "encrypt", "success", 1e-5)
                )
                calls = BACKEND_CALLS[operation]

                def request_metrics(route: routing.Route = route, name: str = store.name) -> None:
                    metrics.observe_request(route.operation, name, "success", False, 1e-4)

                results[operation] = {
                    "sigv4": _microseconds(verify),
                    "parsing": _microseconds(partial(_parse, route, body)),
                    "backend": _microseconds(partial(_operate, runtime, route, parsed))
                    - calls * backend_observe,
                    "answer": _microseconds(partial(_answer, result)),
                    "metrics": _microseconds(request_metrics) + calls * backend_observe,
                    "audit": _microseconds(partial(audit.write, record)),
                }
            audit.close()
    finally:
        await runtime.close()
    return results


def measure(
    config_path: Path, requests: dict[str, tuple[str, bytes, dict[str, str]]]
) -> dict[str, dict[str, float]]:
    """Microseconds per request for each stage of each operation."""
    return asyncio.run(_measure(config_path, requests))


def with_framework(stages: dict[str, float], total: float) -> dict[str, float]:
    """Add "framework" (what the proxy spends per request beyond the stages) and "total" (the
    proxy's CPU microseconds per request under load)."""
    return {**stages, "framework": total - sum(stages.values()), "total": total}
