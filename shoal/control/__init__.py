"""Shoal's control plane: the worker's services, the namespace and the under-stores
(:mod:`shoal.control.ufs`)."""

__all__: list[str] = []
