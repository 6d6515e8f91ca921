"""Shared logic of the nova-ha agents, split by concern (see README: Architecture)."""
