"""The Redis engine: `redis://` and `rediss://` URLs (see `engine.py`)."""

from __future__ import annotations

from .engine import RedisEngine

__all__ = ["RedisEngine"]
