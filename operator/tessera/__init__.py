"""Tessera: identity and access management for workloads on Kubernetes."""

from __future__ import annotations

__version__ = "0.1.0"
