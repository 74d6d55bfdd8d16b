"""Small helpers shared by every part of affinage (file system, ...)."""

from affinage.utils.fs import atomic_directory, atomic_write_text

__all__ = ["atomic_directory", "atomic_write_text"]
