"""``GET /ping``: what a load balancer (or a Kubernetes readiness probe) asks before routing.

``/ping`` needs no authentication (xks-spec §2.2). It answers 200 ``pong`` while the proxy
wants traffic, and 503 when it does not:

- ``stopping``: SIGTERM arrived. The proxy goes on serving for ``server.shutdown_delay_seconds``
  so the balancer sees the 503 and routes new connections elsewhere before the listener closes.
- ``ekm unavailable``: every EKM of every backend was last found UNAVAILABLE, so every key
  operation would fail here while another proxy of the fleet may still reach its HSM. Switched
  off with ``health.ping_fails_when_ekms_unavailable = false`` (then only shutdown turns /ping
  to 503). A DEGRADED EKM still answers requests and keeps /ping at 200.

The same ``Readiness`` answers on the XKS port and on the plain-HTTP ping port.
"""

from __future__ import annotations

from aiohttp import web

from xks_proxy.backends.base import HealthState
from xks_proxy.runtime import LiveRuntime
from xks_proxy.web.connection import request_finished, request_started


class Readiness:
    def __init__(self, live: LiveRuntime) -> None:
        self._live = live
        self.stopping = False

    def all_ekms_unavailable(self) -> bool:
        runtime = self._live.current
        states = [
            ekm.state for backend in runtime.backends for ekm in runtime.health.status(backend)
        ]
        return bool(states) and all(state is HealthState.UNAVAILABLE for state in states)

    def reason_not_ready(self) -> str | None:
        """Why /ping should answer 503, or None when it answers 200."""
        if self.stopping:
            return "stopping"
        config = self._live.current.config
        if config.health.ping_fails_when_ekms_unavailable and self.all_ekms_unavailable():
            return "ekm unavailable"
        return None


READINESS_KEY = web.AppKey("readiness", Readiness)


async def ping(request: web.Request) -> web.Response:
    """Unauthenticated liveness and readiness for load balancers (xks-spec §2.2)."""
    connection = request_started(request)
    reason = request.app[READINESS_KEY].reason_not_ready()
    if reason is None:
        response = web.Response(text="pong\n")
    else:
        response = web.Response(status=503, text=f"{reason}\n")
    if request_finished(connection):
        response.force_close()
    return response
