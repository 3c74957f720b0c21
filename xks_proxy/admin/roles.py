"""Roles and their fixed permissions (issue 13), from a configurable claim of the token.

| role | permissions |
|---|---|
| ``viewer`` | read |
| ``operator`` | read, operate (enable and disable keys, reload) |
| ``key-admin`` | read, manage keys (create, rotate, import, delete material, schedule deletion) |
| ``security-admin`` | read, manage credentials and secondary-authorization policies |

Every role can read: a custodian who cannot see what they change would work blind. Roles do not
include each other otherwise (least privilege; a person who needs two holds two). The claim
(``roles_claim``, e.g. ``groups``) is a string or a list of strings; ``role_names`` maps the
identity provider's group names to roles (default: the role names themselves). Values that map
to no role are ignored.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum
from typing import TYPE_CHECKING

from xks_proxy.admin.errors import AuthenticationError, PermissionDeniedError

if TYPE_CHECKING:
    # Annotations only: ``admin token --role`` lists the roles without loading pyjwt.
    from xks_proxy.admin.tokens import Identity

DEFAULT_ROLES_CLAIM = "roles"


class Permission(StrEnum):
    READ = "read"
    OPERATE = "operate"
    MANAGE_KEYS = "manage-keys"
    MANAGE_SECURITY = "manage-security"


class Role(StrEnum):
    VIEWER = "viewer"
    OPERATOR = "operator"
    KEY_ADMIN = "key-admin"
    SECURITY_ADMIN = "security-admin"


PERMISSIONS: Mapping[Role, frozenset[Permission]] = {
    Role.VIEWER: frozenset({Permission.READ}),
    Role.OPERATOR: frozenset({Permission.READ, Permission.OPERATE}),
    Role.KEY_ADMIN: frozenset({Permission.READ, Permission.MANAGE_KEYS}),
    Role.SECURITY_ADMIN: frozenset({Permission.READ, Permission.MANAGE_SECURITY}),
}

# The admin API's operations and the permission each needs (the endpoints come with the
# key-management service layer; the table is fixed here so the matrix is tested once).
OPERATIONS: Mapping[str, Permission] = {
    "key-stores.list": Permission.READ,
    "key-stores.describe": Permission.READ,
    "keys.list": Permission.READ,
    "keys.describe": Permission.READ,
    "health": Permission.READ,
    "openapi.admin": Permission.READ,
    "openapi.xks": Permission.READ,
    "credentials.list": Permission.READ,
    "policies.get": Permission.READ,
    "policies.validate": Permission.READ,
    "policies.explain": Permission.READ,
    "keys.enable": Permission.OPERATE,
    "keys.disable": Permission.OPERATE,
    "reload": Permission.OPERATE,
    "keys.create": Permission.MANAGE_KEYS,
    "keys.rotate": Permission.MANAGE_KEYS,
    "keys.schedule-deletion": Permission.MANAGE_KEYS,
    "keys.cancel-deletion": Permission.MANAGE_KEYS,
    "keys.import-parameters": Permission.MANAGE_KEYS,
    "keys.import-material": Permission.MANAGE_KEYS,
    "keys.delete-material": Permission.MANAGE_KEYS,
    "credentials.create": Permission.MANAGE_SECURITY,
    "credentials.add": Permission.MANAGE_SECURITY,
    "credentials.revoke": Permission.MANAGE_SECURITY,
    "policies.put": Permission.MANAGE_SECURITY,
}


class RoleMapper:
    def __init__(
        self, claim: str = DEFAULT_ROLES_CLAIM, role_names: Mapping[str, str] | None = None
    ) -> None:
        names = role_names if role_names is not None else {role.value: role.value for role in Role}
        unknown = sorted(set(names.values()) - {role.value for role in Role})
        if unknown:
            raise ValueError(f"role_names: unknown role(s) {', '.join(unknown)}")
        self.claim = claim
        self._names = {group: Role(role) for group, role in names.items()}

    def roles(self, identity: Identity) -> frozenset[Role]:
        value = identity.claims.get(self.claim, [])
        values = [value] if isinstance(value, str) else value
        if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
            raise AuthenticationError(f"claim {self.claim!r} must be a string or a list of them")
        return frozenset(self._names[v] for v in values if v in self._names)

    def authorize(self, identity: Identity, operation: str) -> frozenset[Role]:
        """The caller's roles if they allow ``operation``; else ``PermissionDeniedError`` whose
        reason says who, what and why (for the audit log)."""
        needed = OPERATIONS[operation]
        roles = self.roles(identity)
        if any(needed in PERMISSIONS[role] for role in roles):
            return roles
        held = ", ".join(sorted(roles)) or "none"
        raise PermissionDeniedError(
            f"{identity.issuer} {identity.subject}: {operation} needs {needed.value}; "
            f"roles held: {held}"
        )
