"""The worker runtime: claims jobs under leases and runs their handlers."""

from .runtime import Worker

__all__ = ["Worker"]
