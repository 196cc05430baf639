"""How every engine reports one live worker: one shape, whatever the storage.

A worker registers with free-form JSON info (its host, pid, queues...); the engine adds the
facts it owns. Those win over anything of the same name in the info, so a worker cannot
misreport when it was last seen.
"""

from __future__ import annotations

from typing import Any

import orjson


def worker_entry(
    worker_id: str, info_json: str | bytes, *, last_seen_ms: int, expires_ms: int
) -> dict[str, Any]:
    """The worker's info plus `id`, `last_seen` (seconds, the engine's clock) and
    `expires_ms`. Info that is not a JSON object is kept under `info` rather than lost;
    info that is not JSON at all is reported as such (`info_error`)."""
    try:
        info = orjson.loads(info_json) if info_json else {}
    except orjson.JSONDecodeError:
        info = {"info_error": "stored worker info is not JSON"}
    if not isinstance(info, dict):
        info = {"info": info}
    return {**info, "id": worker_id, "last_seen": last_seen_ms / 1000.0, "expires_ms": expires_ms}
