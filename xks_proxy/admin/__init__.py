"""The admin API's authentication and authorization core (issue 13 part 1), without endpoints.

``tokens`` verifies bearer JWTs (pyjwt), ``keys`` finds the verification key (PEM files, a JWKS
file, a JWKS URL), ``roles`` maps a token's roles claim to fixed permissions, ``http`` is the
aiohttp middleware the admin listener will use. The key-lifecycle endpoints are not here yet:
they need the key-management service layer.
"""
