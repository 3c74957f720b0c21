"""``xks-proxy loadtest``: an open-loop load generator for XKS proxies (and the KMS emulator)."""
