"""The order model: pure decisions about signals and orders, no I/O (tested alone)."""
