"""What the XKS endpoint reads of a request.

aiohttp's ``web.Request`` has it all; the inline path (web/inline.py) passes a lighter object
with just these, built straight from the parsed message: an aiohttp Request per request (its
constructor, the Application's factory and their bookkeeping) was a measurable share of a
request's time under load (issue 15).
"""

from __future__ import annotations

import asyncio
from typing import Any, Protocol

from aiohttp.streams import StreamReader
from multidict import CIMultiDictProxy
from yarl import URL


class XksRequest(Protocol):
    @property
    def method(self) -> str: ...

    @property
    def rel_url(self) -> URL: ...

    @property
    def headers(self) -> CIMultiDictProxy[str]: ...

    @property
    def content(self) -> StreamReader: ...

    @property
    def content_length(self) -> int | None: ...

    @property
    def protocol(self) -> Any: ...

    @property
    def transport(self) -> asyncio.Transport | None: ...
