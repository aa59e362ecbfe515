"""Checkpoint adapters: official key layouts <-> our parameter names (pure state-dict functions)."""
