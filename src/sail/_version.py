"""The version of sail, in a module of its own so that any part of sail can read it
without importing the package (and everything `sail/__init__.py` imports)."""

__version__ = "0.1.0"
