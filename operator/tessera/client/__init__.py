"""Commands for a person at a terminal: ``tessera token`` and ``tessera can-i``."""
