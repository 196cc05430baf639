"""The schedules side of the app: cron and interval schedules defined in code, and
runtime schedules stored in the engine (run by `conveyor scheduler`)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import timedelta
from typing import Any, TypeVar, overload

from ..engines.base import LeaseInfo
from ..errors import ConfigError, InvalidJob
from ..schedules import (
    LEADER_LEASE,
    ScheduleInfo,
    ScheduleSpec,
    cron_schedule,
    every_schedule,
    schedule_info,
)
from ..task import Handler
from .coordination import Coordination
from .producer import Producer
from .registry import Registry

H = TypeVar("H", bound=Handler)


class Scheduling(Registry, Producer, Coordination):
    """Define, store, pause and list schedules; see who leads the schedulers."""

    @overload
    def cron(
        self,
        expr: str,
        *,
        task: str,
        payload: Mapping[str, Any] | None = None,
        timezone: str = "UTC",
        name: str | None = None,
        queue: str | None = None,
        missed: str = "skip",
        **options: Any,
    ) -> ScheduleSpec: ...

    @overload
    def cron(
        self,
        expr: str,
        *,
        task: None = None,
        payload: Mapping[str, Any] | None = None,
        timezone: str = "UTC",
        name: str | None = None,
        queue: str | None = None,
        missed: str = "skip",
        **options: Any,
    ) -> Callable[[H], H]: ...

    def cron(
        self,
        expr: str,
        *,
        task: str | None = None,
        payload: Mapping[str, Any] | None = None,
        timezone: str = "UTC",
        name: str | None = None,
        queue: str | None = None,
        missed: str = "skip",
        **options: Any,
    ) -> ScheduleSpec | Callable[[H], H]:
        """Enqueue a job on a cron schedule (run by `conveyor scheduler`).

        A plain call with `task=` registers the schedule; without `task=` it decorates a
        handler (registered as a task if it is not one yet) and schedules that task.

        Args:
            expr: cron expression, e.g. `"0 3 * * *"` (03:00 daily); see
                `conveyor.schedules` for the DST rule.
            task: task name of the jobs.
            payload: JSON object for every job.
            timezone: IANA timezone the expression is read in (default UTC).
            name: schedule name (default `"<task>@<expr>"`); must be unique.
            queue: queue of the jobs (default: the task's queue).
            missed: occurrences missed while no scheduler ran: `"skip"` or `"run_once"`.
            **options: enqueue options for every job: priority, max_attempts, backoff,
                timeout, tenant, dedupe_key.

        Returns:
            The schedule (plain call) or the decorator.

        Raises:
            ConfigError: an invalid expression, timezone, option or payload, or the name
                is taken; the message names the fix.
        """

        def make(task_name: str) -> ScheduleSpec:
            return cron_schedule(
                expr,
                task=task_name,
                name=name,
                timezone=timezone,
                payload=None if payload is None else dict(payload),
                queue=queue,
                missed=missed,
                options=options,
            )

        return self._code_schedule(task, make)

    @overload
    def every(
        self,
        interval: timedelta | float,
        *,
        task: str,
        payload: Mapping[str, Any] | None = None,
        name: str | None = None,
        queue: str | None = None,
        missed: str = "skip",
        **options: Any,
    ) -> ScheduleSpec: ...

    @overload
    def every(
        self,
        interval: timedelta | float,
        *,
        task: None = None,
        payload: Mapping[str, Any] | None = None,
        name: str | None = None,
        queue: str | None = None,
        missed: str = "skip",
        **options: Any,
    ) -> Callable[[H], H]: ...

    def every(
        self,
        interval: timedelta | float,
        *,
        task: str | None = None,
        payload: Mapping[str, Any] | None = None,
        name: str | None = None,
        queue: str | None = None,
        missed: str = "skip",
        **options: Any,
    ) -> ScheduleSpec | Callable[[H], H]:
        """Enqueue a job every `interval` (at multiples of it since the epoch, UTC).

        Args:
            interval: a timedelta or seconds (at least 1 s).
            task, payload, name, queue, missed, **options: as for `cron` (default name
                `"<task>@every <interval>"`).

        Returns:
            The schedule (plain call with `task=`) or a decorator.

        Raises:
            ConfigError: an invalid interval, option or payload, or the name is taken.
        """

        def make(task_name: str) -> ScheduleSpec:
            return every_schedule(
                interval,
                task=task_name,
                name=name,
                payload=None if payload is None else dict(payload),
                queue=queue,
                missed=missed,
                options=options,
            )

        return self._code_schedule(task, make)

    def _code_schedule(
        self, task: str | None, make: Callable[[str], ScheduleSpec]
    ) -> ScheduleSpec | Callable[[H], H]:
        """Register `make(task)` now, or return a decorator that finds the task name."""
        if task is not None:
            return self._register_schedule(make(task))

        def decorate(fn: H) -> H:
            found = [t.name for t in self.tasks.values() if t.fn is fn]
            task_name = found[0] if found else f"{fn.__module__}.{fn.__qualname__}"
            if not found:
                self.task(task_name)(fn)
            self._register_schedule(make(task_name))
            return fn

        return decorate

    def _register_schedule(self, spec: ScheduleSpec) -> ScheduleSpec:
        self.check_schedule(spec)
        if spec.name in self.schedules and self.schedules[spec.name] != spec:
            raise ConfigError(
                f"schedule {spec.name!r} is defined twice: pass name= to tell them apart"
            )
        self.schedules[spec.name] = spec
        return spec

    def check_schedule(self, spec: ScheduleSpec) -> None:
        """Validate the job a schedule would enqueue (payload, queue, options) once, now,
        with the same checks as `enqueue`, so a bad schedule fails at start-up.

        Raises:
            ConfigError: the job would be rejected; the message names the schedule.
        """
        registered = self.tasks.get(spec.task)
        queue = spec.queue or (registered.queue if registered else self.default_queue)
        try:
            self.build(spec.task, spec.payload, queue=queue, **spec.options)
        except InvalidJob as exc:
            raise ConfigError(f"schedule {spec.name!r}: {exc}") from exc

    async def add_schedule(self, spec: ScheduleSpec) -> None:
        """Store a runtime schedule (or update one); the leading scheduler picks it up
        within a second.

        Raises:
            ConfigError: the schedule is invalid, or its name belongs to a code-defined one.
        """
        self.check_schedule(spec)
        await self._stored_schedule(spec.name, allow_missing=True, action="replace")
        await self.store_schedule(spec, "runtime")

    async def remove_schedule(self, name: str) -> None:
        """Delete a runtime schedule.

        Raises:
            ConfigError: no such schedule, or it is defined in code.
        """
        await self._stored_schedule(name, action="remove")
        await self.delete_schedule(name)

    async def pause_schedule(self, name: str, paused: bool = True) -> None:
        """Stop (or, with `paused=False`, restart) a schedule's occurrences. Occurrences
        that fall while it is paused are never run.

        Raises:
            ConfigError: no such schedule.
        """
        if not await (await self.connect()).set_schedule_paused(name, paused):
            raise ConfigError(_no_schedule(name))

    async def list_schedules(self, now: float | None = None) -> list[ScheduleInfo]:
        """Every stored schedule (code-defined ones appear once a scheduler has started),
        with its next and last run.

        Args:
            now: epoch seconds (default: the app's clock).
        """
        moment = self.clock.now() if now is None else now
        stored = await self.stored_schedules()
        return [schedule_info(s, round(moment * 1000)) for s in stored]

    async def scheduler_leader(self) -> LeaseInfo | None:
        """Which scheduler process leads now (its id and lease time left), if any."""
        return await self.lease_info(LEADER_LEASE)

    async def _stored_schedule(
        self, name: str, *, action: str, allow_missing: bool = False
    ) -> None:
        """Refuse to `action` a schedule that is missing or defined in code (the scheduler
        would register it again at its next start)."""
        found = {s.name: s for s in await self.stored_schedules()}.get(name)
        if found is None and not allow_missing:
            raise ConfigError(_no_schedule(name))
        if found is not None and found.source == "code":
            raise ConfigError(
                f"schedule {name!r} is defined in the app's code, so the scheduler would "
                f"bring it back: change the code to {action} it, or pause it"
            )


def _no_schedule(name: str) -> str:
    return f"no schedule named {name!r}: `conveyor schedules list` shows the names"
