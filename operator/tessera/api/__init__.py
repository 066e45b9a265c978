"""Pydantic models of Tessera's custom resources: the single source of truth for the CRDs."""

from __future__ import annotations
