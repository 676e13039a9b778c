"""Fixture plugin: fails while being imported, to check the error names the file."""

from __future__ import annotations

raise RuntimeError("raises_on_import: boom at import time")
