"""A Cedar policy file, parsed once: the ``PolicySet`` handle, and each policy's id and text.

cedarpy numbers the policies of a file ``policy0``, ``policy1``… in file order; a policy that
carries an ``@id("…")`` annotation is named by it instead (audit lines, ``policy test``), so
operators should give every policy one. Two policies with the same ``@id`` are refused: the
audit line would not say which one decided.

cedarpy's parse errors carry no position ("unexpected token `resource`"), so a failing file is
parsed again token by token (``_locate``) to find where it goes wrong: the first prefix of the
file that fails for another reason than "unexpected end of input" ends at the bad token. A
mistake Cedar only sees in a whole policy (an action of the wrong type) is reported at the
start of that policy.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import cedarpy

from xks_proxy.authz.schema import schema_findings

# Cedar's lexical grammar, as far as finding token and statement boundaries needs it.
_TOKEN = re.compile(
    r"""
    (?P<space>\s+)
    | (?P<comment>//[^\n]*)
    | (?P<string>"(?:\\.|[^"\\])*"?)
    | (?P<word>[A-Za-z_][A-Za-z0-9_]*|[0-9]+)
    | (?P<symbol>::|==|!=|<=|>=|&&|\|\||.)
    """,
    re.VERBOSE | re.DOTALL,
)
_INCOMPLETE = "unexpected end of input"
_ID_ANNOTATION = re.compile(r'@id\s*\(\s*"((?:\\.|[^"\\])*)"\s*\)')


class PolicyError(ValueError):
    """A policy file that cannot be used; the message names the file and the position."""


@dataclass(frozen=True, slots=True)
class Token:
    start: int
    end: int
    text: str


@dataclass(frozen=True, slots=True)
class Policy:
    """One policy of the file: the name audit lines use, its line and its source text."""

    name: str
    line: int
    text: str


@dataclass(frozen=True, slots=True)
class PolicyFile:
    path: Path
    policy_set: cedarpy.PolicySet
    # cedarpy's id (policy0, policy1…) → the policy.
    policies: dict[str, Policy]
    # What validation against the entity model's schema found (authz/schema.py).
    warnings: tuple[str, ...] = ()

    def name_of(self, cedar_id: str) -> str:
        policy = self.policies.get(cedar_id)
        return policy.name if policy is not None else cedar_id

    def describe(self, cedar_id: str) -> Policy | None:
        return self.policies.get(cedar_id)


def tokens(text: str) -> list[Token]:
    found = []
    for match in _TOKEN.finditer(text):
        if match.lastgroup not in ("space", "comment"):
            found.append(Token(match.start(), match.end(), match.group()))
    return found


def position(text: str, offset: int) -> tuple[int, int]:
    """1-based line and column of ``offset``."""
    line = text.count("\n", 0, offset) + 1
    column = offset - (text.rfind("\n", 0, offset) + 1) + 1
    return line, column


def _parse_error(text: str) -> str | None:
    try:
        cedarpy.PolicySet.from_str(text)
    except ValueError as error:
        return str(error) or "invalid policy"
    return None


def _locate(text: str, message: str) -> str:
    """``line L, column C: message`` for a text cedarpy refused with ``message``."""
    found = tokens(text)
    statement_start = found[0].start if found else 0
    for index, token in enumerate(found):
        error = _parse_error(text[: token.end])
        if error is not None and error != _INCOMPLETE:
            # A whole-policy error shows at its closing ';': point at the policy instead.
            offset = statement_start if token.text == ";" else token.start
            line, column = position(text, offset)
            return f"line {line}, column {column}: {error}"
        if token.text == ";" and index + 1 < len(found):
            statement_start = found[index + 1].start
    line, column = position(text, len(text))
    return f"line {line}, column {column}: {message}"


def _statements(text: str) -> list[tuple[int, str]]:
    """Each policy's start offset and source text, in file order."""
    statements = []
    start: int | None = None
    for token in tokens(text):
        if start is None:
            start = token.start
        if token.text == ";":
            statements.append((start, text[start : token.end]))
            start = None
    return statements


def parse_policies(text: str, path: Path) -> PolicyFile:
    """Parse a policy file's text; ``PolicyError`` names the path and the error position."""
    try:
        policy_set = cedarpy.PolicySet.from_str(text)
    except ValueError as error:
        raise PolicyError(f"{path}: {_locate(text, str(error))}") from None
    if policy_set.templates():
        raise PolicyError(f"{path}: templates (?principal, ?resource) are not supported")
    policies: dict[str, Policy] = {}
    names: set[str] = set()
    for index, (start, source) in enumerate(_statements(text)):
        cedar_id = f"policy{index}"
        annotation = _ID_ANNOTATION.search(source)
        name = annotation.group(1) if annotation else cedar_id
        line, _ = position(text, start)
        if name in names:
            raise PolicyError(f"{path}: line {line}: @id({name!r}) is used twice")
        names.add(name)
        policies[cedar_id] = Policy(name=name, line=line, text=source)
    if len(policies) != len(policy_set):
        raise PolicyError(f"{path}: cannot tell its {len(policy_set)} policies apart")
    warnings = tuple(
        f"policy {policies[cedar_id].name} (line {policies[cedar_id].line}): {message}"
        if cedar_id in policies
        else message
        for cedar_id, message in schema_findings(text)
    )
    return PolicyFile(path=path, policy_set=policy_set, policies=policies, warnings=warnings)


def load_policy_file(path: Path) -> PolicyFile:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise PolicyError(f"{path}: cannot read it ({error})") from None
    return parse_policies(text, path)
