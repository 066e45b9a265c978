"""Pure decisions: what Secret, what status, what keys, what claims. No I/O; ``now`` is passed in."""

from __future__ import annotations
