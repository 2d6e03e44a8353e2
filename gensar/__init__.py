"""GenSAR Stream core: what every part shares (settings, event schemas, topics, data, the CLI)."""

__version__ = "0.1.0"
