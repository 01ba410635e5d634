"""Data room: corpora, cleaning, dedup, packing, dataset formats, built-in tasks."""

from .corpus import stdlib_files, stdlib_texts

__all__ = ["stdlib_files", "stdlib_texts"]
