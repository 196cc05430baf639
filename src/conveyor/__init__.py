"""Conveyor: a Python job queue and worker platform.

```python
from conveyor import Conveyor, Job, Retry, Unrecoverable

app = Conveyor()  # CONVEYOR_URL, else REDIS_URL, else sqlite:///conveyor.db

@app.task("email.send", queue="notifications", max_attempts=5, backoff=[1, 5, 30])
async def send_email(job: Job) -> None: ...
```
"""

from .app import Conveyor
from .backoff import Exponential, Fixed, Schedule
from .errors import (
    BreakerOpen,
    ConfigError,
    ConveyorError,
    EngineFull,
    EngineUnavailable,
    InvalidArgument,
    InvalidJob,
    InvalidPayload,
    InvalidResult,
    InvalidState,
    JobCancelled,
    JobFailed,
    JobNotFound,
    MalformedJob,
    NotReplicated,
    PayloadTooLarge,
    RateLimited,
    Retry,
    UnknownTask,
    Unrecoverable,
)
from .job import AttemptError, Job, JobState
from .worker import Worker

__all__ = [
    "AttemptError",
    "BreakerOpen",
    "ConfigError",
    "Conveyor",
    "ConveyorError",
    "EngineFull",
    "EngineUnavailable",
    "Exponential",
    "Fixed",
    "InvalidArgument",
    "InvalidJob",
    "InvalidPayload",
    "InvalidResult",
    "InvalidState",
    "Job",
    "JobCancelled",
    "JobFailed",
    "JobNotFound",
    "JobState",
    "MalformedJob",
    "NotReplicated",
    "PayloadTooLarge",
    "RateLimited",
    "Retry",
    "Schedule",
    "UnknownTask",
    "Unrecoverable",
    "Worker",
]
