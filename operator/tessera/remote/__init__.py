"""Adapters that talk to servers other than the Kubernetes API server (identity providers)."""
