"""Secondary authorization of XKS requests with Cedar policies (xks-spec §6.5).

``policy`` parses a key store's policy file, ``request`` maps a request onto Cedar's entity
model, ``authorizer`` decides (with a bounded decision cache), ``load`` builds the authorizers of
a configuration. The service calls ``Authorizer.check`` once per key operation, never for
GetHealthStatus (§6.5: it MUST be excluded).
"""
