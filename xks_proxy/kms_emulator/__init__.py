"""A local AWS KMS front end whose external-key-store keys call an XKS proxy as AWS KMS does."""
