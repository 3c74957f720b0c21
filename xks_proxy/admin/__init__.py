"""The admin API (issue 13 part 1).

``tokens`` verifies bearer JWTs (pyjwt), ``keys`` finds the verification key (PEM files, a JWKS
file, a JWKS URL), ``roles`` maps a token's roles claim to fixed permissions, ``http`` is the
aiohttp guard with its audit hook, ``settings`` reads ``[admin.auth]``. ``api`` and
``api_policies`` are the endpoints over the CLI's service layer, ``client`` the CLI's side of
``--admin-url``, ``devtoken`` and ``token_command`` the development tokens. The listener is
``web/admin_listener.py``.
"""
