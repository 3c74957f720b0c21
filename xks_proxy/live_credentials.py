"""The credentials a key store accepts when some live in a shared key store (``"database"``).

The configuration's inline credentials are fixed for a runtime's life; the stored ones change
whenever any host of the fleet creates, adds or revokes one, and the software backend's follower
replaces them within a second. This mapping asks the backend on every lookup, so a request is
verified against the credentials in force when it arrives, with no reload.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping

from xks_proxy.sigv4 import Credential


class LiveCredentials(Mapping[str, Credential]):
    def __init__(
        self,
        inline: Mapping[str, Credential],
        stored: Callable[[], Mapping[str, Credential]],
    ) -> None:
        self._inline = inline
        self._stored = stored

    def __getitem__(self, access_key_id: str) -> Credential:
        inline = self._inline.get(access_key_id)
        return inline if inline is not None else self._stored()[access_key_id]

    def __iter__(self) -> Iterator[str]:
        stored = self._stored()
        yield from self._inline
        yield from (key for key in stored if key not in self._inline)

    def __len__(self) -> int:
        return sum(1 for _ in self)
