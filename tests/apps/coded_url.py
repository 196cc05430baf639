"""An app that names its engine in code, as `Conveyor("sqlite:///...")`.

Tests run `conveyor worker|api|dev|scheduler tests.apps.coded_url:app` to check that
the CLI keeps this URL unless a flag or the environment overrides it. The file comes
from `CODED_APP_DB` only so each test gets its own; the app still passes a literal URL.
"""

from __future__ import annotations

import os

from conveyor import Conveyor, Job

app = Conveyor(f"sqlite:///{os.environ['CODED_APP_DB']}")


@app.task("coded.echo", queue="coded")
async def echo(job: Job) -> dict[str, object]:
    return {"echo": job.payload}
