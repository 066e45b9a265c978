"""The Kopf operator: registrations in :mod:`handlers`, process start-up in :mod:`runner`."""

from __future__ import annotations
