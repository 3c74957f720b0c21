"""Key lifecycle operations: one service layer under the CLI (and, later, the admin API)."""
