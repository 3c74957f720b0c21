"""KEK rotation: ``xks-proxy keys rewrap --config F --new-kek REF``, as one service function.

The store, opened with the KEK its configuration names, is resealed under ``REF`` (any kind to
any kind: ``file:``/``env:`` ↔ ``pkcs11:``) in one write transaction that proves every row
unseals under the new KEK before it commits (``keystore.resealing``). One audit line says who
rewrapped what to which KEK (kinds and check values, never key material) and how it ended.

Proxies of a fleet still configured with the old KEK cannot follow the store any more: their
follower reports the new KEK as the reason (health DEGRADED) and they go on serving the keys they
hold in memory, sealed rows included, until each is restarted with the new ``kek``; their writes
are refused. A proxy started with the old KEK is refused with a message naming both KEKs.
"""

from __future__ import annotations

from xks_proxy.kek_config import Kek
from xks_proxy.keymgmt.audit import LifecycleAudit
from xks_proxy.keymgmt.service import REFUSALS
from xks_proxy.keystore.resealing import ResealResult, reseal_store
from xks_proxy.keystore.sealing import describe_identity, make_sealer
from xks_proxy.keystore.store import KeyDatabase

ACTION = "rewrap"


def rewrap_kek(
    database: KeyDatabase, new_kek: Kek, audit: LifecycleAudit, actor: str
) -> ResealResult:
    """Reseal every key version and store secret of ``database`` under ``new_kek``."""
    try:
        new = make_sealer(new_kek, database.location.display)
        try:
            result = reseal_store(database, new)
        finally:
            new.close()
    except Exception as error:
        audit.record(
            actor=actor, action=ACTION, key_id=None,
            outcome="refused" if isinstance(error, REFUSALS) else "failed",
            detail=f"{type(error).__name__}: {error}"[:300],
        )  # fmt: skip
        raise
    audit.record(
        actor=actor, action=ACTION, key_id=None, outcome="success",
        detail=f"{result.versions} key versions and {result.secrets} store secrets of "
        f"{database.location.display} resealed from {describe_identity(result.old_identity)} "
        f"to {describe_identity(result.new_identity)}",
    )  # fmt: skip
    return result
