"""An app with a typed task (a pydantic payload model), for the API and CLI tests.

`build(url)` gives a fresh app; `app` (no URL) is what `conveyor api tests.apps.typed:app
--print-openapi` documents.
"""

from __future__ import annotations

from pydantic import BaseModel, Field

from conveyor import Conveyor, Job


class Email(BaseModel):
    to: str = Field(pattern=r"^[^@]+@[^@]+$", description="recipient address")
    subject: str


class Sent(BaseModel):
    message_id: str


def build(url: str | None = None) -> Conveyor:
    app = Conveyor(url)

    @app.task("email.send", queue="mail")
    async def send(job: Job[Email]) -> Sent:
        return Sent(message_id=f"m-{job.payload.to}")

    @app.task("plain", queue="mail")
    async def plain(job: Job) -> None:
        return None

    return app


app = build()
