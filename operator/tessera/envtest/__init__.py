"""A real kube-apiserver + etcd on loopback for tests and ``make run`` (Tessera's envtest)."""

from __future__ import annotations
