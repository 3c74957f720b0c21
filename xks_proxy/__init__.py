"""xks-proxy: an AWS KMS External Key Store (XKS) proxy."""

__version__ = "0.1.0"
