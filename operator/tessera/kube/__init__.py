"""Adapters that talk to the API server and translate its errors into :mod:`tessera.errors`."""

from __future__ import annotations
