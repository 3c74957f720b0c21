"""Logging an unexpected exception without its message.

An exception raised deep in a backend, a driver or a library may carry anything in its message:
plaintext, key material, a PIN echoed back by a PKCS#11 wrapper. The log keeps what an operator
needs to find the bug (the exception's type and where it was raised) and never the message.
"""

from __future__ import annotations

import logging
import traceback


def log_unexpected(logger: logging.Logger, level: int, what: str, error: BaseException) -> None:
    """Log ``what`` failed, with ``error``'s type and stack frames, never ``str(error)``."""
    where = "".join(traceback.format_tb(error.__traceback__))
    logger.log(level, "%s failed with %s:\n%s", what, type(error).__name__, where)
