"""Transport and operations against the real ``xks-proxy serve`` process: TLS and mTLS,
graceful shutdown, reload, timeouts, size cap, quotas, deadline, concurrency cap, workers."""

from __future__ import annotations

import asyncio
import http.client
import json
import re
import signal
import socket
import ssl
import subprocess
import threading
import time
import urllib.request
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import trustme

from tests.conftest import KEY_BOTH, Deployment, make_deployment, with_server_settings
from tests.proxy_process import (
    XKS_PROXY,
    ProxyProcess,
    close_all,
    connect,
    open_socket,
    post,
    signed_request,
)
from tests.xks_client import HEALTH_BODY, decrypt_body, encrypt_body, unb64
from xks_proxy import sigv4
from xks_proxy.credentials import CredentialsFile, generate_credential
from xks_proxy.devcert import self_signed
from xks_proxy.web.tls import certificate_not_after

KMS_CN = "cks.kms.us-east-1.amazonaws.com"


@pytest.fixture(autouse=True)
def _close_connections() -> Iterator[None]:
    yield
    close_all()


UNREACHABLE = (ssl.SSLError, ConnectionError, http.client.RemoteDisconnected, OSError)


@dataclass
class Pki:
    directory: Path
    ca: trustme.CA

    @property
    def ca_pem(self) -> Path:
        return self.directory / "ca.pem"

    def server_files(self, name: str = "server") -> tuple[Path, Path]:
        cert = self.ca.issue_cert("localhost", "127.0.0.1")
        cert_path, key_path = self.directory / f"{name}.pem", self.directory / f"{name}.key"
        cert_path.unlink(missing_ok=True)
        for blob in cert.cert_chain_pems:
            blob.write_to_path(str(cert_path), append=True)
        cert.private_key_pem.write_to_path(str(key_path))
        return cert_path, key_path

    def client_context(self, client: tuple[Path, Path] | None = None) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=str(self.ca_pem))
        if client is not None:
            context.load_cert_chain(*client)
        return context


def _write_leaf(directory: Path, name: str, cert: Any) -> tuple[Path, Path]:
    cert_path, key_path = directory / f"{name}.pem", directory / f"{name}.key"
    cert.cert_chain_pems[0].write_to_path(str(cert_path))
    cert.private_key_pem.write_to_path(str(key_path))
    return cert_path, key_path


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    directory = tmp_path_factory.mktemp("pki")
    ca = trustme.CA()
    ca.cert_pem.write_to_path(str(directory / "ca.pem"))
    return Pki(directory, ca)


@pytest.fixture(scope="module")
def client_certs(pki: Pki) -> dict[str, tuple[Path, Path]]:
    now = datetime.now(UTC)
    other_ca = trustme.CA()
    certs = {
        "kms": _write_leaf(pki.directory, "kms", pki.ca.issue_cert(KMS_CN, common_name=KMS_CN)),
        "wrong-name": _write_leaf(
            pki.directory,
            "wrong",
            pki.ca.issue_cert("evil.example.com", common_name="evil.example.com"),
        ),
        "expired": _write_leaf(
            pki.directory,
            "expired",
            pki.ca.issue_cert(
                KMS_CN,
                common_name=KMS_CN,
                not_before=now - timedelta(days=10),
                not_after=now - timedelta(days=1),
            ),
        ),
        "other-ca": _write_leaf(
            pki.directory, "other", other_ca.issue_cert(KMS_CN, common_name=KMS_CN)
        ),
    }
    certificate, key = self_signed(KMS_CN)
    (pki.directory / "self.pem").write_bytes(certificate)
    (pki.directory / "self.key").write_bytes(key)
    certs["self-signed"] = (pki.directory / "self.pem", pki.directory / "self.key")
    return certs


def configure(
    deployment: Deployment,
    *,
    server: dict[str, Any] | None = None,
    backend: dict[str, Any] | None = None,
    key_store: dict[str, Any] | None = None,
    tls: tuple[Path, Path] | None = None,
    mtls_ca: Path | None = None,
) -> Path:
    """Add settings to a deployment's TOML; returns its path."""
    path = deployment.config_path
    text = path.read_text()

    def lines(values: dict[str, Any] | None) -> str:
        return "".join(f"{k} = {json.dumps(v)}\n" for k, v in (values or {}).items())

    text = with_server_settings(text, server or {})
    text = text.replace('kek = "file:kek.key"\n', 'kek = "file:kek.key"\n' + lines(backend))
    text += lines(key_store)
    if tls is not None:
        text += f'\n[tls]\ncertificate = "{tls[0]}"\nprivate_key = "{tls[1]}"\n'
    if mtls_ca is not None:
        text += f'\n[tls.client_auth]\nca_bundle = "{mtls_ca}"\n'
    path.write_text(text)
    return path


def credential(deployment: Deployment) -> sigv4.Credential:
    return deployment.config.key_stores[0].credentials[0]


HEALTH_PATH = "/keystores/dev/kms/xks/v1/health"
ENCRYPT_PATH = f"/keystores/dev/kms/xks/v1/keys/{KEY_BOTH}/encrypt"
DECRYPT_PATH = f"/keystores/dev/kms/xks/v1/keys/{KEY_BOTH}/decrypt"


def metrics_text(proxy: ProxyProcess, marker: str = "metrics on ") -> str:
    line = next(line for line in proxy.lines if marker in line)
    url = re.search(r"(http://\S+/metrics)", line)
    assert url is not None
    with urllib.request.urlopen(url.group(1), timeout=10) as response:
        return str(response.read().decode())


def metric_value(text: str, name: str) -> float:
    return sum(
        float(line.split()[-1])
        for line in text.splitlines()
        if line.startswith(name + " ") or line.startswith(name + "{")
    )


# -- TLS ------------------------------------------------------------------------------------


def test_tls_versions_and_cipher_suites(tmp_path: Path, pki: Pki) -> None:
    deployment = make_deployment(tmp_path)
    server_files = pki.server_files()
    config = configure(deployment, tls=server_files)
    with ProxyProcess(config) as proxy:
        assert "https://" in proxy.log
        for version, name in (
            (ssl.TLSVersion.TLSv1_2, "TLSv1.2"),
            (ssl.TLSVersion.TLSv1_3, "TLSv1.3"),
        ):
            context = pki.client_context()
            context.minimum_version = context.maximum_version = version
            connection = connect(proxy.port, context)
            status, health = post(connection, HEALTH_PATH, HEALTH_BODY, credential(deployment))
            assert status == 200 and health["ekmFleetDetails"][0]["healthStatus"] == "ACTIVE"
            sock = connection.sock
            assert isinstance(sock, ssl.SSLSocket) and sock.version() == name
            cipher = sock.cipher()
            assert cipher is not None and ("GCM" in cipher[0] or "CHACHA20" in cipher[0])
            connection.close()
        old = pki.client_context()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # TLS 1.1 is, on purpose
            old.minimum_version = ssl.TLSVersion.TLSv1
            old.maximum_version = ssl.TLSVersion.TLSv1_1
        old.set_ciphers("DEFAULT:@SECLEVEL=0")
        with pytest.raises(UNREACHABLE):
            post(connect(proxy.port, old), HEALTH_PATH, HEALTH_BODY, credential(deployment))
        cbc = pki.client_context()
        cbc.maximum_version = ssl.TLSVersion.TLSv1_2
        cbc.set_ciphers("ECDHE-ECDSA-AES256-SHA:ECDHE-RSA-AES256-SHA:AES256-SHA")
        with pytest.raises(UNREACHABLE):
            post(connect(proxy.port, cbc), HEALTH_PATH, HEALTH_BODY, credential(deployment))
        assert metric_value(metrics_text(proxy), "xks_tls_handshake_failures_total") >= 2
        expected = certificate_not_after(server_files[0]).timestamp()
        expiry = metric_value(metrics_text(proxy), "xks_tls_certificate_expiry_timestamp_seconds")
        assert expiry == expected


def _curl(port: int, path: str, body: bytes, cred: sigv4.Credential, *tls: str) -> Any:
    result = subprocess.run(
        ["curl", "-sS", "--fail-with-body", "--max-time", "20", *tls,
         "--aws-sigv4", "aws:amz:us-east-1:kms-xks-proxy",
         "--user", f"{cred.access_key_id}:{cred.secret_access_key}",
         "-H", "Content-Type: application/json", "--data-binary", "@-",
         f"https://localhost:{port}{path}"],
        input=body, capture_output=True, timeout=30, check=True,
    )  # fmt: skip
    return json.loads(result.stdout)


def test_mutual_tls_accepts_kms_and_refuses_every_other_client(
    tmp_path: Path, pki: Pki, client_certs: dict[str, tuple[Path, Path]]
) -> None:
    deployment = make_deployment(tmp_path)
    config = configure(
        deployment, server={"ping_port": 0, "ping_host": "127.0.0.1"},
        tls=pki.server_files(), mtls_ca=pki.ca_pem,
    )  # fmt: skip
    with ProxyProcess(config) as proxy:
        kms = connect(proxy.port, pki.client_context(client_certs["kms"]))
        assert post(kms, HEALTH_PATH, HEALTH_BODY, credential(deployment))[0] == 200
        for refused in (None, "wrong-name", "expired", "other-ca", "self-signed"):
            context = pki.client_context(client_certs[refused] if refused else None)
            with pytest.raises(UNREACHABLE):
                post(connect(proxy.port, context), HEALTH_PATH, HEALTH_BODY, credential(deployment))
        assert "evil.example.com" in proxy.log and "is not allowed" in proxy.log
        # real curl, signing with --aws-sigv4, over mutual TLS
        cert, key = client_certs["kms"]
        tls_args = ("--cacert", str(pki.ca_pem), "--cert", str(cert), "--key", str(key))
        encrypted = _curl(
            proxy.port,
            ENCRYPT_PATH,
            json.dumps(encrypt_body(b"curl")).encode(),
            credential(deployment),
            *tls_args,
        )
        decrypted = _curl(
            proxy.port,
            DECRYPT_PATH,
            json.dumps(decrypt_body(encrypted)).encode(),
            credential(deployment),
            *tls_args,
        )
        assert unb64(decrypted["plaintext"]) == b"curl"
        with pytest.raises(subprocess.CalledProcessError):
            _curl(
                proxy.port, HEALTH_PATH, b"{}", credential(deployment), "--cacert", str(pki.ca_pem)
            )
        # the load balancer's plain-HTTP probe needs no certificate
        with urllib.request.urlopen(f"http://127.0.0.1:{proxy.ping_port}/ping", timeout=10) as ping:
            assert ping.status == 200
        assert metric_value(metrics_text(proxy), "xks_tls_handshake_failures_total") >= 5


def test_init_tls_makes_a_working_https_deployment(tmp_path: Path) -> None:
    subprocess.run([XKS_PROXY, "init", str(tmp_path / "d"), "--tls", "--port", "0",
                    "--metrics-port", "0", "--admin-port", "0"],
                   check=True, capture_output=True)  # fmt: skip
    config = tmp_path / "d" / "xks-proxy.toml"
    kms = json.loads(subprocess.run([XKS_PROXY, "kms-config", "--config", str(config)],
                                    check=True, capture_output=True).stdout)  # fmt: skip
    cred = sigv4.Credential(
        kms["XksProxyAuthenticationCredential"]["AccessKeyId"],
        kms["XksProxyAuthenticationCredential"]["RawSecretAccessKey"],
    )
    with ProxyProcess(config) as proxy:
        health = _curl(
            proxy.port,
            HEALTH_PATH,
            json.dumps(HEALTH_BODY).encode(),
            cred,
            "--cacert",
            str(tmp_path / "d" / "tls" / "server.pem"),
        )
        assert health["ekmFleetDetails"][0]["healthStatus"] == "ACTIVE"


# -- graceful shutdown ---------------------------------------------------------------------


def _raw_request(port: int, path: str, document: Any, cred: sigv4.Credential) -> bytes:
    host = f"127.0.0.1:{port}"
    body, headers = signed_request(path, document, cred, host)
    head = f"POST {path} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    head += f"Content-Length: {len(body)}\r\n\r\n"
    return head.encode() + body


def _read_response(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("closed before a response")
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    headers = {k.lower(): v.strip() for k, v in (line.split(":", 1) for line in lines[1:])}
    length = int(headers.get("content-length", "0"))
    while len(rest) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        rest += chunk
    return int(lines[0].split()[1]), headers, rest


def _wait_until_refused(port: int, timeout: float = 10) -> None:
    """Poll until the listener is closed: wait on the state itself, not on a log line."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
        except ConnectionRefusedError:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"port {port} still accepts connections after {timeout} s")
        time.sleep(0.02)


def test_sigterm_lets_every_started_request_finish(tmp_path: Path) -> None:
    deployment = make_deployment(tmp_path)
    config = configure(deployment, server={"drain_seconds": 20, "shutdown_delay_seconds": 0})
    cred = credential(deployment)
    with ProxyProcess(config) as proxy:
        slow = []
        for index in range(8):
            raw = _raw_request(proxy.port, ENCRYPT_PATH, encrypt_body(b"slow %d" % index), cred)
            sock = open_socket(proxy.port)
            sock.sendall(raw[: len(raw) - 40])  # headers and most of the body
            slow.append((sock, raw[len(raw) - 40 :]))
        idle = open_socket(proxy.port)
        idle.sendall(_raw_request(proxy.port, HEALTH_PATH, HEALTH_BODY, cred))
        assert _read_response(idle)[0] == 200
        time.sleep(0.3)
        proxy.send_signal(signal.SIGTERM)
        _wait_until_refused(proxy.port)
        assert idle.recv(1) == b"", "an idle keep-alive connection is closed at once"
        time.sleep(1.0)  # the rest of each body arrives well after the signal
        for sock, rest in slow:
            sock.sendall(rest)
        for sock, _ in slow:
            status, headers, body = _read_response(sock)
            assert status == 200, body
            assert headers.get("connection", "").lower() == "close"
            assert json.loads(body)["ciphertext"]
            sock.close()
        assert proxy.stop() == 0
    assert "drain complete" in proxy.log


# -- reload --------------------------------------------------------------------------------


def test_reload_rotates_credentials_on_an_open_connection(tmp_path: Path) -> None:
    deployment = make_deployment(tmp_path)
    config = deployment.config_path
    old = credential(deployment)
    with ProxyProcess(config) as proxy:
        connection = connect(proxy.port)
        assert post(connection, HEALTH_PATH, HEALTH_BODY, old)[0] == 200
        assert connection.sock is not None
        local = connection.sock.getsockname()
        credentials = CredentialsFile(deployment.directory / "credentials.json")
        new = generate_credential()
        credentials.add("dev", new)
        credentials.remove(old.access_key_id)
        assert post(connection, HEALTH_PATH, HEALTH_BODY, new)[0] == 401
        subprocess.run([XKS_PROXY, "reload", "--config", str(config)], check=True,
                       capture_output=True)  # fmt: skip
        proxy.wait_for("configuration reloaded")
        assert post(connection, HEALTH_PATH, HEALTH_BODY, new)[0] == 200
        status, error = post(connection, HEALTH_PATH, HEALTH_BODY, old)
        assert (status, error["errorName"]) == (401, "AuthenticationFailedException")
        # a broken configuration is refused and the running one stays in force
        good = config.read_text()
        config.write_text(good.replace('region = "us-east-1"', 'region = "mars"'))
        proxy.send_signal(signal.SIGHUP)
        proxy.wait_for("reload rejected")
        assert "key_stores[0].region" in proxy.log
        status, encrypted = post(connection, ENCRYPT_PATH, encrypt_body(b"after"), new)
        assert status == 200 and encrypted["ciphertext"]
        assert connection.sock is not None and connection.sock.getsockname() == local
        metrics = metrics_text(proxy)
        assert metric_value(metrics, 'xks_config_reloads_total{result="applied"}') == 1
        assert metric_value(metrics, 'xks_config_reloads_total{result="rejected"}') == 1


def test_reload_swaps_the_certificate_for_new_connections(tmp_path: Path, pki: Pki) -> None:
    deployment = make_deployment(tmp_path)
    cert_path, key_path = pki.server_files("first")
    config = configure(deployment, tls=(cert_path, key_path))
    with ProxyProcess(config) as proxy:
        before = connect(proxy.port, pki.client_context())
        assert post(before, HEALTH_PATH, HEALTH_BODY, credential(deployment))[0] == 200
        assert isinstance(before.sock, ssl.SSLSocket)
        first_serial = before.sock.getpeercert()["serialNumber"]  # type: ignore[index]
        new_cert, new_key = pki.server_files("second")
        cert_path.write_bytes(new_cert.read_bytes())
        key_path.write_bytes(new_key.read_bytes())
        proxy.send_signal(signal.SIGHUP)
        proxy.wait_for("configuration reloaded")
        after = connect(proxy.port, pki.client_context())
        assert post(after, HEALTH_PATH, HEALTH_BODY, credential(deployment))[0] == 200
        assert isinstance(after.sock, ssl.SSLSocket)
        assert after.sock.getpeercert()["serialNumber"] != first_serial  # type: ignore[index]
        assert post(before, HEALTH_PATH, HEALTH_BODY, credential(deployment))[0] == 200


def test_reload_without_a_running_proxy_says_so(tmp_path: Path) -> None:
    deployment = make_deployment(tmp_path)
    result = subprocess.run([XKS_PROXY, "reload", "--config", str(deployment.config_path)],
                            capture_output=True, text=True, check=False)  # fmt: skip
    assert result.returncode == 1 and "xks-proxy.pid" in result.stderr


# -- limits --------------------------------------------------------------------------------


def test_slow_clients_are_cut_off(tmp_path: Path) -> None:
    deployment = make_deployment(tmp_path)
    config = configure(deployment, server={"header_timeout_seconds": 1, "body_timeout_seconds": 1})
    with ProxyProcess(config) as proxy:
        loris = open_socket(proxy.port)
        started = time.monotonic()
        request_head = f"POST {HEALTH_PATH} HTTP/1.1\r\nHost: x\r\nX-Slow: ".encode()
        closed = False
        for byte in request_head + b"a" * 100:
            try:
                loris.send(bytes([byte]))
            except OSError:
                closed = True
                break
            time.sleep(0.2)
            if time.monotonic() - started > 8:
                break
        if not closed:
            try:
                closed = loris.recv(1) == b""
            except OSError:
                closed = True
        assert closed and time.monotonic() - started < 6
        # a body that stops arriving gets an answer and a closed connection
        slow_body = open_socket(proxy.port)
        raw = _raw_request(proxy.port, HEALTH_PATH, HEALTH_BODY, credential(deployment))
        slow_body.sendall(raw[:-10])
        status, headers, body = _read_response(slow_body)
        assert (status, json.loads(body)["errorName"]) == (400, "ValidationException")
        assert headers["connection"].lower() == "close"
        answered = time.monotonic()
        assert slow_body.recv(1) == b""
        assert time.monotonic() - answered < 1.0, "closed within 1 s after the error answer"


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def test_oversized_bodies_do_not_grow_memory(tmp_path: Path) -> None:
    deployment = make_deployment(tmp_path)
    with ProxyProcess(deployment.config_path) as proxy:
        sock = open_socket(proxy.port)
        sock.sendall(_raw_request(proxy.port, HEALTH_PATH, HEALTH_BODY, credential(deployment)))
        assert _read_response(sock)[0] == 200
        before = _rss_kib(proxy.process.pid)
        chunk = b"x" * (1 << 20)
        for declared in ("Content-Length: 1073741824\r\n", "Transfer-Encoding: chunked\r\n"):
            for _ in range(3):
                sock = open_socket(proxy.port)
                sock.sendall(f"POST {ENCRYPT_PATH} HTTP/1.1\r\nHost: x\r\n{declared}\r\n".encode())
                sent = 0
                try:
                    while sent < 64 * len(chunk):
                        payload = (
                            chunk
                            if "Length" in declared
                            else (f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
                        )
                        sock.sendall(payload)
                        sent += len(chunk)
                except OSError:
                    pass
                status, _, body = _read_response(sock)
                assert (status, json.loads(body)["errorName"]) == (
                    501,
                    "UnsupportedOperationException",
                )
                sock.close()
        growth = _rss_kib(proxy.process.pid) - before
        assert growth < 16 * 1024, f"the server grew by {growth} KiB"


def test_key_store_quota_answers_429(tmp_path: Path) -> None:
    deployment = make_deployment(tmp_path)
    config = configure(deployment, key_store={"requests_per_second": 5, "burst": 5})
    cred = credential(deployment)
    with ProxyProcess(config) as proxy:
        connection = connect(proxy.port)
        started = time.monotonic()
        statuses = [post(connection, HEALTH_PATH, HEALTH_BODY, cred) for _ in range(30)]
        elapsed = time.monotonic() - started
        accepted = sum(status == 200 for status, _ in statuses)
        assert 5 <= accepted <= 5 + int(elapsed * 5) + 1
        throttled = [body for status, body in statuses if status == 429]
        assert len(throttled) == 30 - accepted
        assert {body["errorName"] for body in throttled} == {"ThrottlingException"}
        time.sleep(1.2)
        assert post(connection, HEALTH_PATH, HEALTH_BODY, cred)[0] == 200
        # unauthenticated requests do not use up the quota
        wrong = sigv4.Credential(cred.access_key_id, "w" * 44)
        for _ in range(10):
            assert post(connection, HEALTH_PATH, HEALTH_BODY, wrong)[0] == 401
        assert post(connection, HEALTH_PATH, HEALTH_BODY, cred)[0] == 200


def test_slow_backend_meets_the_deadline_and_shows_degraded(tmp_path: Path) -> None:
    # A backend delay far beyond the deadline: the answer comes at the deadline, long before
    # the backend's, however loaded the machine (the bound below is on a hang, not on speed).
    deployment = make_deployment(tmp_path)
    config = configure(
        deployment, server={"request_deadline_ms": 100}, backend={"fault_delay_ms": 5000}
    )
    cred = credential(deployment)
    with ProxyProcess(config) as proxy:
        connection = connect(proxy.port)
        started = time.monotonic()
        status, error = post(connection, ENCRYPT_PATH, encrypt_body(b"x"), cred)
        assert (status, error["errorName"]) == (503, "DependencyTimeoutException")
        assert time.monotonic() - started < 5, "it waited for the backend, not the deadline"
        status, health = post(connection, HEALTH_PATH, HEALTH_BODY, cred)
        assert status == 200 and health["ekmFleetDetails"][0]["healthStatus"] == "DEGRADED"


def test_concurrency_cap_answers_429(tmp_path: Path) -> None:
    deployment = make_deployment(tmp_path)
    config = configure(
        deployment,
        server={"max_concurrent_requests": 2, "request_deadline_ms": 5000},
        backend={"fault_delay_ms": 1000},
    )
    cred = credential(deployment)
    with ProxyProcess(config) as proxy:
        results: list[int] = []

        def one() -> None:
            results.append(post(connect(proxy.port), ENCRYPT_PATH, encrypt_body(b"x"), cred)[0])

        threads = [threading.Thread(target=one) for _ in range(6)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=30)
        assert sorted(results) == [200, 200, 429, 429, 429, 429]


# -- workers -------------------------------------------------------------------------------


def test_workers_share_the_port_and_are_restarted(tmp_path: Path) -> None:
    deployment = make_deployment(tmp_path)
    cred = credential(deployment)
    with ProxyProcess(
        deployment.config_path, "--workers", "2", ready="metrics of all workers"
    ) as proxy:
        proxy.wait_for("listening on", count=2)
        pids = [int(p) for p in re.findall(r"worker \d started \(pid (\d+)\)", proxy.log)]
        assert len(pids) == 2
        for _ in range(20):
            connection = connect(proxy.port)
            assert post(connection, HEALTH_PATH, HEALTH_BODY, cred)[0] == 200
            connection.close()
        text = metrics_text(proxy, "metrics of all workers on ")
        assert metric_value(
            text, 'xks_request_duration_seconds_count{key_store="dev",operation='
                  '"GetHealthStatus",outcome="success"}'
        ) == 20  # fmt: skip
        __import__("os").kill(pids[0], signal.SIGKILL)
        proxy.wait_for("restarting")
        proxy.wait_for("listening on", count=3)
        for _ in range(5):
            connection = connect(proxy.port)
            assert post(connection, HEALTH_PATH, HEALTH_BODY, cred)[0] == 200
            connection.close()
        assert proxy.stop() == 0
    assert asyncio  # the module's async helpers live in other test files
