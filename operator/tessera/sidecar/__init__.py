"""The sidecar: verifies callers' tokens for the app in its pod from the mounted trust bundle.

It imports neither kopf nor the Kubernetes client: all it knows comes from files kubelet mounts.
"""
