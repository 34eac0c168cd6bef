"""The `sail` command."""
