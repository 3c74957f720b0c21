"""Server TLS and optional mutual TLS (xks-spec §1, §6.1, §6.4).

TLS 1.2 and 1.3 only; TLS 1.2 limited to ECDHE with AEAD ciphers (AES-GCM, ChaCha20-Poly1305),
which include the spec's ``TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384`` and
``TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384``; TLS 1.3's suites are all AEAD and include
``TLS_AES_256_GCM_SHA384`` and ``TLS_CHACHA20_POLY1305_SHA256``. ALPN offers HTTP/1.1 only.

With ``client_auth``, OpenSSL demands a client certificate and verifies its chain against the
configured CA bundle and its validity dates during the handshake, so a wrong CA, an expired or
a self-signed certificate fail the handshake itself. The subject CN is then checked against the
allowed names before the connection is handed to HTTP: a wrongly named certificate gets its
connection closed before a single HTTP byte is read. (Python's ``ssl`` offers no verification
callback, so the name check runs right after the handshake rather than inside it.)
"""

from __future__ import annotations

import logging
import ssl
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from cryptography import x509

from xks_proxy.config import TlsConfig
from xks_proxy.errors import ConfigError

log = logging.getLogger(__name__)

TLS12_CIPHERS = ":".join(
    (
        "ECDHE-ECDSA-AES256-GCM-SHA384",
        "ECDHE-RSA-AES256-GCM-SHA384",
        "ECDHE-ECDSA-CHACHA20-POLY1305",
        "ECDHE-RSA-CHACHA20-POLY1305",
        "ECDHE-ECDSA-AES128-GCM-SHA256",
        "ECDHE-RSA-AES128-GCM-SHA256",
    )
)


def build_context(config: TlsConfig) -> ssl.SSLContext:
    """A server context from the configured PEM files; raises ConfigError naming the bad key."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.maximum_version = ssl.TLSVersion.TLSv1_3
    context.set_ciphers(TLS12_CIPHERS)
    context.options |= ssl.OP_NO_COMPRESSION | ssl.OP_CIPHER_SERVER_PREFERENCE
    context.options |= ssl.OP_NO_RENEGOTIATION
    context.set_alpn_protocols(["http/1.1"])
    try:
        context.load_cert_chain(
            config.certificate, config.private_key, password=config.private_key_password
        )
    except (ssl.SSLError, OSError) as error:
        raise ConfigError(
            f"tls.certificate / tls.private_key: cannot load {config.certificate} with "
            f"{config.private_key} ({type(error).__name__})"
        ) from None
    if config.client_auth is not None:
        context.verify_mode = ssl.CERT_REQUIRED
        try:
            context.load_verify_locations(cafile=config.client_auth.ca_bundle)
        except (ssl.SSLError, OSError):
            raise ConfigError(
                f"tls.client_auth.ca_bundle: cannot load {config.client_auth.ca_bundle}"
            ) from None
    return context


def certificate_not_after(path: Any) -> datetime:
    """Expiry of the first certificate in a PEM file."""
    with open(path, "rb") as handle:
        certificate = x509.load_pem_x509_certificate(handle.read())
    return certificate.not_valid_after_utc


def _common_names(peercert: dict[str, Any] | None) -> list[str]:
    if not peercert:
        return []
    return [
        value for rdn in peercert.get("subject", ()) for key, value in rdn if key == "commonName"
    ]


@dataclass(frozen=True)
class TlsState:
    """One loaded TLS configuration; a reload builds a new one for new connections."""

    config: TlsConfig
    context: ssl.SSLContext
    not_after: datetime

    @classmethod
    def load(cls, config: TlsConfig) -> TlsState:
        return cls(config, build_context(config), certificate_not_after(config.certificate))

    def days_to_expiry(self, now: datetime | None = None) -> float:
        now = now or datetime.now(UTC)
        return (self.not_after - now).total_seconds() / 86_400

    def warn_if_expiring(self) -> None:
        days = self.days_to_expiry()
        if days < self.config.expiry_warning_days:
            log.warning(
                "TLS certificate %s expires in %.1f days (%s); KMS stops working when it does",
                self.config.certificate,
                days,
                self.not_after.isoformat(),
            )

    def client_allowed(self, peercert: dict[str, Any] | None) -> tuple[bool, str]:
        """Whether the verified client certificate names an allowed subject, and its CN."""
        if self.config.client_auth is None:
            return True, ""
        names = _common_names(peercert)
        allowed = {n.lower() for n in self.config.client_auth.allowed_common_names}
        return any(n.lower() in allowed for n in names), ",".join(names)
