"""Requests checked against botocore's KMS service model, the authority on what AWS accepts.

AWS validates every parameter against the shape the service model declares (length, pattern,
range, enum, required) before an operation runs, and words each failure the same way::

    1 validation error detected: Value 'x' at 'xksProxyUriPath' failed to satisfy constraint:
    Member must satisfy regular expression pattern: ^(/[a-zA-Z0-9\\/_-]+/kms/xks/v\\d{1,2})$|...

Checking against the model itself means every operation, present and future, refuses what AWS
refuses in AWS's words, and no parameter limit is copied by hand. Values of sensitive members
(plaintext, secrets) never appear in a message. A value of the wrong JSON type is a
SerializationException, as in AWS.

``page`` is the Limit/Marker pagination every List operation shares.
"""

from __future__ import annotations

import base64
import binascii
import functools
import re
from collections.abc import Sequence
from typing import Any, TypeVar

from xks_proxy.kms_emulator.errors import KmsError

T = TypeVar("T")


@functools.cache
def service_model() -> dict[str, Any]:
    try:
        from botocore.loaders import create_loader
    except ImportError:  # an optional dependency: only the emulator needs it
        raise SystemExit(
            "the KMS emulator checks requests against botocore's KMS service model: "
            "pip install 'xks-proxy[emulator]'"
        ) from None
    model: dict[str, Any] = create_loader().load_service_model("kms", "service-2")
    return model


def operation_names() -> frozenset[str]:
    return frozenset(service_model()["operations"])


def _wire_name(member: str) -> str:
    """AWS names members in lower camel case: ``XksProxyUriPath`` → ``xksProxyUriPath``."""
    return member[:1].lower() + member[1:]


@functools.cache
def _pattern(expression: str) -> re.Pattern[str]:
    return re.compile(expression)


class _Checker:
    def __init__(self, relaxed: frozenset[str]) -> None:
        self.shapes: dict[str, Any] = service_model()["shapes"]
        self.relaxed = relaxed  # shapes whose pattern the caller checks itself
        self.problems: list[str] = []

    def fail(self, value: Any, path: str, constraint: str, *, sensitive: bool) -> None:
        # AWS shows null for a missing value, and nothing for a sensitive one.
        shown = " null" if value is None else "" if sensitive else f" '{value}'"
        self.problems.append(
            f"Value{shown} at '{path}' failed to satisfy constraint: Member must {constraint}"
        )

    def check(self, value: Any, shape_name: str, path: str) -> None:
        shape = self.shapes[shape_name]
        kind = shape["type"]
        sensitive = bool(shape.get("sensitive"))
        checker = getattr(self, f"_check_{kind}", None)
        if checker is not None:
            checker(value, shape_name, shape, path, sensitive)

    def _bounds(
        self, size: int, shape: dict[str, Any], value: Any, path: str, what: str, sensitive: bool
    ) -> None:
        if "min" in shape and size < shape["min"]:
            self.fail(
                value,
                path,
                f"have {what} greater than or equal to {shape['min']}",
                sensitive=sensitive,
            )
        if "max" in shape and size > shape["max"]:
            self.fail(
                value,
                path,
                f"have {what} less than or equal to {shape['max']}",
                sensitive=sensitive,
            )

    def _check_structure(
        self, value: Any, name: str, shape: dict[str, Any], path: str, sensitive: bool
    ) -> None:
        if not isinstance(value, dict):
            raise _type_error(path or name)
        for member in shape.get("required", []):
            if value.get(member) is None:
                self.fail(None, _join(path, member), "not be null", sensitive=False)
        for member, spec in shape["members"].items():
            if value.get(member) is not None:
                self.check(value[member], spec["shape"], _join(path, member))

    def _check_string(
        self, value: Any, name: str, shape: dict[str, Any], path: str, sensitive: bool
    ) -> None:
        if not isinstance(value, str):
            raise _type_error(path)
        self._bounds(len(value), shape, value, path, "length", sensitive)
        if "enum" in shape and value not in shape["enum"]:
            self.fail(
                value,
                path,
                f"satisfy enum value set: [{', '.join(shape['enum'])}]",
                sensitive=sensitive,
            )
        expression = shape.get("pattern")
        if expression and name not in self.relaxed and not _pattern(expression).fullmatch(value):
            self.fail(
                value,
                path,
                f"satisfy regular expression pattern: {expression}",
                sensitive=sensitive,
            )

    def _check_integer(
        self, value: Any, name: str, shape: dict[str, Any], path: str, sensitive: bool
    ) -> None:
        if not isinstance(value, int) or isinstance(value, bool):
            raise _type_error(path)
        self._bounds(value, shape, value, path, "value", sensitive)

    _check_long = _check_integer

    def _check_boolean(
        self, value: Any, name: str, shape: dict[str, Any], path: str, sensitive: bool
    ) -> None:
        if not isinstance(value, bool):
            raise _type_error(path)

    def _check_timestamp(
        self, value: Any, name: str, shape: dict[str, Any], path: str, sensitive: bool
    ) -> None:
        # The JSON protocol sends timestamps as seconds since the epoch.
        if not isinstance(value, int | float) or isinstance(value, bool):
            raise _type_error(path)

    def _check_blob(
        self, value: Any, name: str, shape: dict[str, Any], path: str, sensitive: bool
    ) -> None:
        if not isinstance(value, str):
            raise _type_error(path)
        try:
            size = len(base64.b64decode(value, validate=True))
        except (binascii.Error, ValueError):
            raise KmsError("SerializationException", f"'{path}' is not valid Base64") from None
        self._bounds(size, shape, value, path, "length", True)  # AWS shows no blob

    def _check_list(
        self, value: Any, name: str, shape: dict[str, Any], path: str, sensitive: bool
    ) -> None:
        if not isinstance(value, list):
            raise _type_error(path)
        self._bounds(len(value), shape, "[...]", path, "length", sensitive)
        for index, item in enumerate(value, start=1):
            self.check(item, shape["member"]["shape"], f"{path}.{index}.member")

    def _check_map(
        self, value: Any, name: str, shape: dict[str, Any], path: str, sensitive: bool
    ) -> None:
        if not isinstance(value, dict):
            raise _type_error(path)
        for key, item in value.items():
            self.check(key, shape["key"]["shape"], f"{path}.key")
            self.check(item, shape["value"]["shape"], f"{path}.value")


def _join(path: str, member: str) -> str:
    return f"{path}.{_wire_name(member)}" if path else _wire_name(member)


def _type_error(path: str) -> KmsError:
    return KmsError("SerializationException", f"Unexpected type of value at '{path}'")


def check_request(
    operation: str, params: dict[str, Any], *, relaxed: frozenset[str] = frozenset()
) -> None:
    """ValidationException, in AWS's words, when ``params`` break the input shape."""
    spec = service_model()["operations"][operation]
    if "input" not in spec:
        return
    checker = _Checker(relaxed)
    checker.check(params, spec["input"]["shape"], "")
    problems = checker.problems
    if problems:
        count = f"{len(problems)} validation error{'s' if len(problems) > 1 else ''}"
        raise KmsError("ValidationException", f"{count} detected: {'; '.join(problems)}")


def page(
    items: Sequence[T], params: dict[str, Any], default_limit: int = 100
) -> tuple[list[T], dict[str, Any]]:
    """One page of ``items`` and the Truncated/NextMarker fields of the answer.

    The marker is the offset of the next item, made opaque; a list that changes between pages
    may repeat or skip an item, as AWS warns its lists may too (eventual consistency)."""
    limit = params.get("Limit") or default_limit
    start = 0
    if params.get("Marker") is not None:
        try:
            start = int(base64.urlsafe_b64decode(params["Marker"]).decode().removeprefix("o:"))
        except (ValueError, UnicodeDecodeError):
            raise KmsError("InvalidMarkerException", "Invalid marker") from None
        if start <= 0:  # past the end (items deleted meanwhile) is an empty last page
            raise KmsError("InvalidMarkerException", "Invalid marker")
    end = start + limit
    answer: dict[str, Any] = {"Truncated": end < len(items)}
    if end < len(items):
        answer["NextMarker"] = base64.urlsafe_b64encode(f"o:{end}".encode()).decode()
    return list(items[start:end]), answer
