"""CLI verbs, one module per area; each registers its commands on ``affinage.cli.app``."""
