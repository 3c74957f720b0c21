"""The software backend's embedded key store."""
