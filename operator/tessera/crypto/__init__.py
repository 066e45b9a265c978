"""Key and token code shared by the operator and the sidecar (no Kubernetes, no I/O)."""

from __future__ import annotations
