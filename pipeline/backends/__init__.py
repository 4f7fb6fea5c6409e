"""Backends: the contract (base.py) and its implementations; see base.py."""
