"""Locust load test for an XKS proxy, for teams that already run Locust.

Requests are signed with xks-proxy's own SigV4 module, as ``xks-proxy loadtest`` signs them.

    pip install locust xks-proxy
    XKS_KMS_CONFIG=proxy-config.json XKS_KEY_ID=payments-key-1 \\
        locust -f deploy/locustfile.py --host https://xks.example.com

``XKS_KMS_CONFIG`` is the JSON ``xks-proxy kms-config`` prints; ``XKS_REGION`` defaults to
us-east-1. Locust is closed-loop: for latency under a fixed arrival rate, use
``xks-proxy loadtest``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from locust import FastHttpUser, between, task  # type: ignore[import-not-found]

from xks_proxy.loadtest.workload import XksTarget, XksWorkload
from xks_proxy.sigv4 import Credential


def _workload(host: str) -> XksWorkload:
    config = json.loads(Path(os.environ["XKS_KMS_CONFIG"]).read_text())
    credential = config["XksProxyAuthenticationCredential"]
    target = XksTarget(
        url=host.rstrip("/"),
        uri_path=config["XksProxyUriPath"],
        region=os.environ.get("XKS_REGION", "us-east-1"),
        credential=Credential(credential["AccessKeyId"], credential["RawSecretAccessKey"]),
        key_id=os.environ.get("XKS_KEY_ID", ""),
    )
    return XksWorkload(target, plaintext_bytes=4096, aad_bytes=64)


class XksUser(FastHttpUser):  # type: ignore[misc]
    wait_time = between(0, 0.01)

    def on_start(self) -> None:
        self.workload = _workload(self.host)
        url, body, headers = self.workload.request("encrypt")
        with self.client.post(url, data=body, headers=headers, catch_response=True) as response:
            self.workload.set_ciphertext(response.json())

    def _send(self, operation: str) -> None:
        url, body, headers = self.workload.request(operation)
        self.client.post(url, data=body, headers=headers, name=operation)

    @task(70)
    def encrypt(self) -> None:
        self._send("encrypt")

    @task(20)
    def decrypt(self) -> None:
        self._send("decrypt")

    @task(5)
    def metadata(self) -> None:
        self._send("metadata")

    @task(5)
    def health(self) -> None:
        self._send("health")
