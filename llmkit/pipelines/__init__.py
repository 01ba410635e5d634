"""Pipelines: jobs that chain rooms (init now; quickstart and recipes later)."""

from .init import init_model

__all__ = ['init_model']
