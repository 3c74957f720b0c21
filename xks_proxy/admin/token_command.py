"""``xks-proxy admin token --config F --role R [--ttl 15m]``: a development admin token.

It signs with the private half of the first ``[admin.auth] public_keys`` entry, found next to
it with the extension ``.key`` (what ``init`` writes: ``admin/dev-signing.key`` and ``.pem``),
or with ``--signing-key``. The token goes to standard output only (or to a 0600 file with
``--out``), never to a log. For local use: production tokens come from the identity provider.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

from xks_proxy.admin.roles import Role
from xks_proxy.config import load_config
from xks_proxy.credentials import write_private_file
from xks_proxy.errors import CommandError, ConfigError


def cmd_admin_token(args: argparse.Namespace) -> int:
    from xks_proxy.admin.devtoken import mint_token, parse_ttl  # pyjwt, cryptography

    config = load_config(Path(args.config), with_backends=False)
    auth = config.admin.auth
    if auth is None or not auth.public_keys:
        raise ConfigError("admin.auth: no public_keys, so there is no development signing key")
    try:
        ttl = parse_ttl(args.ttl)
    except ValueError as error:
        raise ConfigError(str(error)) from None
    public = auth.public_keys[0]
    private = Path(args.signing_key) if args.signing_key else public.with_suffix(".key")
    try:
        token = mint_token(
            private, kid=public.stem, issuer=auth.policy.issuers[0],
            audience=auth.policy.audience, role=Role(args.role), ttl_seconds=ttl,
            subject=args.subject,
        )  # fmt: skip
    except ValueError as error:
        raise CommandError(str(error)) from None
    if args.out:
        write_private_file(Path(args.out), token + "\n")
    else:
        print(token)
    return 0


def add_admin_commands(
    commands: argparse._SubParsersAction[argparse.ArgumentParser],
    config_arg: Callable[[argparse.ArgumentParser], None],
) -> None:
    admin = commands.add_parser("admin", help="the admin API: development tokens")
    actions = admin.add_subparsers(dest="admin_command", required=True, metavar="ACTION")
    token = actions.add_parser("token", help="mint a development admin token (local use only)")
    config_arg(token)
    token.add_argument("--role", required=True, choices=[role.value for role in Role])
    token.add_argument("--ttl", default="15m", help="lifetime: 90s, 15m, 8h (at most 24h)")
    token.add_argument("--subject", default="local-admin", help="the token's sub (the audit actor)")
    token.add_argument("--signing-key", help="the private key (default: next to the public key)")
    token.add_argument("--out", help="write the token to this file (0600) instead of stdout")
    token.set_defaults(func=cmd_admin_token)
