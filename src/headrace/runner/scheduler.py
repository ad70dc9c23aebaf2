"""The scheduler behind ``headrace serve``: cron schedules, catch-up, SLAs and alerts.

Each ``[schedules.NAME]`` has a cron expression read in its ``timezone``; every fire time is
one *interval*, identified by that instant. :meth:`Scheduler.due` says which intervals should
run now; :meth:`Scheduler.tick` runs them; :meth:`Scheduler.serve` loops until stopped.

What is decided here:

* **First sight.** A schedule the scheduler has never fired runs its latest interval (the
  last fire time at or before now) once, as Airflow does with ``catchup=False``; history
  before that is never backfilled.
* **Catch-up.** After downtime, ``catchup = "skip"`` runs only the latest missed interval,
  ``"all"`` runs every missed interval, oldest first (at most :data:`MAX_CATCHUP` per tick;
  the rest follow on the next ticks).
* **No overlap.** A schedule's intervals run under the state-store lock
  ``schedule:NAME`` taken with a zero wait: when another process holds it, this process
  skips the schedule with a log line and tries again on its next wake. Under the lock the
  last fired interval is read again, so two schedulers never run the same interval twice.
* **At least once.** An interval is recorded as fired when its run has finished (any
  status), so a scheduler killed mid-run runs that interval again on restart; runs are
  idempotent, so that is safe. A run that could not start (a broken pipeline file, an
  unknown selection) still counts as fired: it is reported, not retried in a loop.
* **SLAs.** ``max_duration``: a watchdog sends one ``sla_missed`` alert as soon as a run has
  been going for longer (a hung run is reported while it hangs). ``deadline``: once the
  deadline of an interval has passed (a local time on the interval's day, or the next day
  when it is not after the fire time), ``sla_missed`` is sent once if no run of that
  interval or a later one had succeeded by then. Deadlines that had already passed when the
  scheduler first saw the schedule are not judged.

Where the scheduler's memory lives: the state store has no table for it (runs carry a
command but not an interval), so it is a small JSON file, ``.headrace/scheduler.json``,
read and rewritten atomically under an ``flock`` so several local processes can share it.
With a PostgreSQL store shared by several hosts, the ``schedule:NAME`` lock still prevents
overlapping runs, but each host keeps its own file: run ``headrace serve`` on one host.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import socket
import tempfile
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from croniter import croniter

from headrace.errors import HeadraceError, TransientError
from headrace.observe.alerts import Alert, AlertSender, DeliveryReport, alerts_for_run
from headrace.project.config import ScheduleConfig

if TYPE_CHECKING:
    from headrace.runner.events import RunResult
    from headrace.runner.workspace import Workspace

__all__ = [
    "MAX_CATCHUP",
    "STATE_FILE",
    "ScheduleState",
    "ScheduledRun",
    "Scheduler",
    "deadline_for",
    "fires_between",
    "latest_fire",
    "next_fire",
]

log = logging.getLogger(__name__)

#: Where the scheduler keeps its memory, relative to the project folder.
STATE_FILE = ".headrace/scheduler.json"
#: The longest ``serve`` sleeps between looks at the clock.
MAX_WAIT_SECONDS = 30.0
#: Missed intervals run per schedule per tick with ``catchup = "all"``.
MAX_CATCHUP = 1000
_KEEP_SUCCESSES = 50
_MIN_WAIT_SECONDS = 0.05


def _utcnow() -> datetime:
    return datetime.now(UTC)


# --------------------------------------------------------------------------- cron arithmetic


def latest_fire(schedule: ScheduleConfig, now: datetime) -> datetime:
    """The last fire time at or before ``now`` (aware, in the schedule's zone)."""
    local = now.astimezone(schedule.tz)
    prev: datetime = croniter(schedule.cron, local).get_prev(datetime)
    nxt: datetime = croniter(schedule.cron, prev).get_next(datetime)
    return nxt if nxt <= now else prev


def next_fire(schedule: ScheduleConfig, now: datetime) -> datetime:
    """The first fire time strictly after ``now``."""
    result: datetime = croniter(schedule.cron, now.astimezone(schedule.tz)).get_next(datetime)
    return result


def fires_between(
    schedule: ScheduleConfig, after: datetime, until: datetime, *, limit: int = MAX_CATCHUP
) -> list[datetime]:
    """Fire times in ``(after, until]``, oldest first, at most ``limit``."""
    it = croniter(schedule.cron, after.astimezone(schedule.tz))
    found: list[datetime] = []
    while len(found) < limit:
        fire: datetime = it.get_next(datetime)
        if fire > until:
            break
        found.append(fire)
    return found


def deadline_for(schedule: ScheduleConfig, interval: datetime) -> datetime | None:
    """The instant the interval's ``deadline`` falls on (None without a deadline)."""
    if schedule.deadline is None:
        return None
    tz = schedule.tz
    local = interval.astimezone(tz)
    when = datetime.combine(local.date(), schedule.deadline, tzinfo=tz)
    if when <= local:
        when = datetime.combine(local.date() + timedelta(days=1), schedule.deadline, tzinfo=tz)
    return when


def _last_judged_interval(schedule: ScheduleConfig, now: datetime) -> tuple[datetime, datetime] | None:
    """The latest interval whose deadline is at or before ``now``, with that deadline."""
    if schedule.deadline is None:
        return None
    interval = latest_fire(schedule, now)
    deadline = deadline_for(schedule, interval)
    assert deadline is not None
    if deadline <= now:
        return interval, deadline
    # Intervals in [previous deadline - 1 day, previous deadline) share the previous deadline,
    # and every interval after the previous deadline is judged at the next one.
    previous = datetime.combine(deadline.date() - timedelta(days=1), schedule.deadline, tzinfo=schedule.tz)
    earlier: datetime = croniter(schedule.cron, previous).get_prev(datetime)
    earlier_deadline = deadline_for(schedule, earlier)
    assert earlier_deadline is not None
    return earlier, earlier_deadline


def _next_deadline(schedule: ScheduleConfig, now: datetime) -> datetime | None:
    """The next instant at which some interval's deadline could pass."""
    if schedule.deadline is None:
        return None
    local = now.astimezone(schedule.tz)
    when = datetime.combine(local.date(), schedule.deadline, tzinfo=schedule.tz)
    if when <= local:
        when = datetime.combine(local.date() + timedelta(days=1), schedule.deadline, tzinfo=schedule.tz)
    return when


# --------------------------------------------------------------------------- persisted state


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.astimezone(UTC).isoformat()


def _parse(value: Any) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


class ScheduleState:
    """The scheduler's memory: one record per schedule in a JSON file.

    Every change is a read-modify-write under an exclusive ``flock`` on a sidecar file and
    lands with an atomic rename, so concurrent local processes never lose each other's
    updates and a crash never leaves half a file.
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    def read(self) -> dict[str, dict[str, Any]]:
        """Every schedule's record (empty when the file does not exist yet)."""
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return {}
        except OSError as exc:
            log.warning("cannot read %s: %s; starting from an empty schedule state", self.path, exc)
            return {}
        try:
            data = json.loads(text)
            schedules = data.get("schedules", {}) if isinstance(data, dict) else {}
            return {k: v for k, v in schedules.items() if isinstance(v, dict)}
        except (ValueError, AttributeError):
            log.warning("%s is not valid JSON; starting from an empty schedule state", self.path)
            return {}

    def get(self, name: str) -> dict[str, Any]:
        return self.read().get(name, {})

    def update(self, name: str, change: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
        """Apply ``change`` to one schedule's record and save; returns the new record."""
        with self._locked():
            data = self.read()
            record = data.setdefault(name, {})
            change(record)
            self._write(data)
            return record

    def _write(self, schedules: Mapping[str, Any]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        payload = json.dumps({"version": 1, "schedules": schedules}, indent=2, sort_keys=True)
        fd, tmp = tempfile.mkstemp(prefix=".scheduler-", suffix=".json", dir=self.path.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                handle.write(payload + "\n")
            Path(tmp).replace(self.path)
        except BaseException:
            with contextlib.suppress(OSError):
                Path(tmp).unlink()
            raise

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            import fcntl
        except ImportError:  # not POSIX: a single scheduler process is assumed
            yield
            return
        with open(self.path.with_name(self.path.name + ".lock"), "a+") as handle:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


# --------------------------------------------------------------------------- results


@dataclass
class ScheduledRun:
    """What the scheduler did about one interval of one schedule."""

    schedule: str
    interval: datetime
    status: str  # success | failed | error (the run could not start) | locked (another process)
    run_id: str | None = None
    seconds: float | None = None
    error: str | None = None
    tables: int | None = None
    alerts: list[DeliveryReport] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.status in ("success", "locked")

    def to_json(self) -> dict[str, Any]:
        return {
            "schedule": self.schedule,
            "interval": self.interval.isoformat(),
            "status": self.status,
            "run_id": self.run_id,
            "seconds": None if self.seconds is None else round(self.seconds, 3),
            "tables": self.tables,
            "error": self.error,
            "alerts": [report.to_json() for report in self.alerts],
        }


# --------------------------------------------------------------------------- scheduler


class Scheduler:
    """Runs a project's schedules; everything time-related goes through ``clock``/``sleep``.

    ``workspace_factory`` opens a fresh :class:`~headrace.runner.workspace.Workspace` (so
    edited pipelines are picked up on every run); the scheduler closes it. ``sender``
    delivers alerts (none are sent without one). ``state_path`` defaults to
    ``<project>/.headrace/scheduler.json``. ``lock_timeout`` is how long to wait for a
    schedule held by another process before skipping it (0: do not wait). ``on_run`` is
    called after every interval, e.g. to print it.
    """

    def __init__(
        self,
        workspace_factory: Callable[[], Workspace],
        schedules: Mapping[str, ScheduleConfig],
        *,
        clock: Callable[[], datetime] = _utcnow,
        sleep: Callable[[float], None] | None = None,
        sender: AlertSender | None = None,
        state_path: Path | None = None,
        project: str | None = None,
        lock_timeout: float = 0.0,
        max_wait: float = MAX_WAIT_SECONDS,
        on_run: Callable[[ScheduledRun], None] | None = None,
    ) -> None:
        self.workspace_factory = workspace_factory
        self.schedules = dict(schedules)
        self.clock = clock
        self.sleep = sleep
        self.sender = sender
        self.lock_timeout = lock_timeout
        self.max_wait = max_wait
        self.on_run = on_run
        self.owner = f"headrace scheduler pid {os.getpid()}@{socket.gethostname()}"
        self._state_path = state_path
        self._project = project
        self._stop = threading.Event()

    # -- identity -----------------------------------------------------------------------

    def _ensure_project(self) -> None:
        if self._state_path is not None and self._project is not None:
            return
        ws = self.workspace_factory()
        try:
            if self._state_path is None:
                self._state_path = ws.config.root / STATE_FILE
            if self._project is None:
                self._project = ws.config.name
        finally:
            ws.close()

    @property
    def state(self) -> ScheduleState:
        self._ensure_project()
        assert self._state_path is not None
        return ScheduleState(self._state_path)

    @property
    def project(self) -> str:
        self._ensure_project()
        assert self._project is not None
        return self._project

    def _enabled(self) -> dict[str, ScheduleConfig]:
        return {name: s for name, s in self.schedules.items() if s.enabled}

    # -- what is due --------------------------------------------------------------------

    def due(self, now: datetime | None = None) -> list[tuple[str, datetime]]:
        """``(schedule, interval)`` pairs that should run at ``now``, oldest interval first."""
        now = now or self.clock()
        records = self.state.read()
        pairs = [
            (name, interval)
            for name, schedule in self._enabled().items()
            for interval in self._due_intervals(schedule, records.get(name, {}), now)
        ]
        return sorted(pairs, key=lambda pair: (pair[1], pair[0]))

    def _due_intervals(
        self, schedule: ScheduleConfig, record: Mapping[str, Any], now: datetime
    ) -> list[datetime]:
        latest = latest_fire(schedule, now)
        last = _parse(record.get("last_fired"))
        if last is None:
            return [latest]
        if latest <= last:
            return []
        if schedule.catchup == "skip":
            return [latest]
        missed = fires_between(schedule, last, now)
        if len(missed) == MAX_CATCHUP:
            log.warning("schedule catch-up capped at %d intervals per tick", MAX_CATCHUP)
        return missed

    def seconds_until_next(self, now: datetime | None = None) -> float:
        """How long ``serve`` may sleep: until the next fire time or deadline, capped."""
        now = now or self.clock()
        moments: list[datetime] = []
        for schedule in self._enabled().values():
            moments.append(next_fire(schedule, now))
            deadline = _next_deadline(schedule, now)
            if deadline is not None:
                moments.append(deadline)
        if not moments:
            return self.max_wait
        wait = (min(moments) - now).total_seconds()
        return max(_MIN_WAIT_SECONDS, min(wait, self.max_wait))

    # -- running ------------------------------------------------------------------------

    def stop(self) -> None:
        """Ask :meth:`serve` (and a :meth:`tick` in progress) to stop after the current run."""
        self._stop.set()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def tick(self, now: datetime | None = None) -> list[ScheduledRun]:
        """Run whatever is due at ``now``, then judge deadlines; returns what was done."""
        now = now or self.clock()
        self._remember_new(now)
        grouped: dict[str, list[datetime]] = {}
        for name, interval in self.due(now):
            grouped.setdefault(name, []).append(interval)
        done: list[ScheduledRun] = []
        for name, intervals in grouped.items():
            if self.stopping:
                break
            done += self._run_schedule(name, intervals)
        self.check_deadlines()
        return done

    def _remember_new(self, now: datetime) -> None:
        """Note when each schedule was first seen: earlier deadlines are not judged."""
        records = self.state.read()
        for name in self._enabled():
            if "first_seen" not in records.get(name, {}):
                self.state.update(name, lambda r: r.setdefault("first_seen", _iso(now)))

    def _run_schedule(self, name: str, intervals: Sequence[datetime]) -> list[ScheduledRun]:
        schedule = self.schedules[name]
        done: list[ScheduledRun] = []
        try:
            ws = self.workspace_factory()
        except HeadraceError as exc:
            log.error("schedule %s: cannot open the project: %s", name, exc.message)
            return [self._report(ScheduledRun(name, intervals[-1], "error", error=exc.message))]
        try:
            with contextlib.ExitStack() as stack:
                try:
                    stack.enter_context(
                        ws.store.lock(f"schedule:{name}", owner=self.owner, timeout=self.lock_timeout)
                    )
                except TransientError as exc:
                    log.info("schedule %s: skipped, another process is running it (%s)",
                             name, exc.message)
                    return [self._report(ScheduledRun(name, intervals[-1], "locked", error=exc.message))]
                # Another process may have run some of these while we waited for the lock.
                last = _parse(self.state.get(name).get("last_fired"))
                for interval in intervals:
                    if self.stopping:
                        break
                    if last is not None and interval <= last:
                        continue
                    done.append(self._report(self._run_interval(ws, name, schedule, interval)))
        except HeadraceError as exc:  # the store cannot be reached: try again on the next tick
            log.error("schedule %s: %s", name, exc.message)
            done.append(self._report(ScheduledRun(name, intervals[-1], "error", error=exc.message)))
        finally:
            ws.close()
        return done

    def _report(self, run: ScheduledRun) -> ScheduledRun:
        if self.on_run is not None:
            try:
                self.on_run(run)
            except Exception:
                log.exception("on_run callback failed")
        return run

    def _run_interval(
        self, ws: Workspace, name: str, schedule: ScheduleConfig, interval: datetime
    ) -> ScheduledRun:
        started = self.clock()
        log.info("schedule %s: running interval %s", name, interval.isoformat())
        self.state.update(name, lambda r: r.update(running={
            "interval": _iso(interval), "started": _iso(started),
            "host": socket.gethostname(), "pid": os.getpid(),
        }))
        watchdog = _Watchdog(self, name, schedule, interval)
        watchdog.start()
        result: RunResult | None = None
        error: str | None = None
        try:
            result = ws.run(list(schedule.select), command=f"schedule:{name}")
        except HeadraceError as exc:
            error = str(exc)
        except Exception as exc:
            error = f"internal error: {type(exc).__name__}: {exc}"
        finally:
            fired = watchdog.finish()
        ended = self.clock()
        run = ScheduledRun(name, interval, "error", error=error)
        if result is not None:
            run = ScheduledRun(name, interval, result.status, run_id=result.run_id,
                               seconds=result.seconds, tables=len(result.tasks))
        self._record(name, interval, run, started, ended)
        log.info("schedule %s: interval %s %s%s", name, interval.isoformat(), run.status,
                 f" (run {run.run_id}, {run.seconds:.1f}s)" if run.run_id else f": {error}")
        alerts: list[Alert] = []
        if result is not None:
            alerts += alerts_for_run(result, self.project)
        else:
            alerts.append(Alert(
                kind="run_failed",
                title=f"schedule {name}: the run for {interval.isoformat()} could not start",
                text=error or "",
                project=self.project,
                details={"schedule": name, "interval": interval.isoformat()},
            ))
        limit = schedule.max_duration
        if result is not None and limit is not None and not fired and result.seconds > limit.total_seconds():
            alerts.append(_duration_alert(self.project, name, interval, limit,
                                          result.seconds, result.run_id, finished=True))
        run.alerts = watchdog.reports + self._send(alerts)
        return run

    def _record(self, name: str, interval: datetime, run: ScheduledRun,
                started: datetime, ended: datetime) -> None:
        def change(record: dict[str, Any]) -> None:
            record.update(
                last_fired=_iso(interval), last_run_id=run.run_id, last_status=run.status,
                last_started=_iso(started), last_ended=_iso(ended), last_error=run.error,
                running=None,
            )
            if run.status == "success":
                successes = dict(record.get("successes") or {})
                successes[_iso(interval) or ""] = _iso(ended)
                record["successes"] = dict(sorted(successes.items())[-_KEEP_SUCCESSES:])

        self.state.update(name, change)

    def _send(self, alerts: Sequence[Alert]) -> list[DeliveryReport]:
        if not alerts:
            return []
        if self.sender is None:
            for alert in alerts:
                log.warning("alert %s not sent (no [alerts] configured): %s", alert.kind, alert.title)
            return []
        return self.sender.send_all(alerts)

    # -- deadlines ----------------------------------------------------------------------

    def check_deadlines(self, now: datetime | None = None) -> list[DeliveryReport]:
        """Send ``sla_missed`` once for each schedule whose latest passed deadline was missed."""
        now = now or self.clock()
        reports: list[DeliveryReport] = []
        records = self.state.read()
        for name, schedule in self._enabled().items():
            judged = _last_judged_interval(schedule, now)
            record = records.get(name, {})
            first_seen = _parse(record.get("first_seen"))
            if judged is None or first_seen is None:
                continue
            interval, deadline = judged
            if deadline <= first_seen or record.get("deadline_checked") == _iso(interval):
                continue
            met = any(
                (fired := _parse(key)) is not None and fired >= interval
                and (finished := _parse(value)) is not None and finished <= deadline
                for key, value in (record.get("successes") or {}).items()
            )
            def mark(record: dict[str, Any], checked: str | None = _iso(interval)) -> None:
                record.update(deadline_checked=checked)

            self.state.update(name, mark)
            if met:
                continue
            log.warning("schedule %s: interval %s missed its deadline %s",
                        name, interval.isoformat(), deadline.isoformat())
            status = record.get("last_status") if _parse(record.get("last_fired")) == interval else None
            reports += self._send([Alert(
                kind="sla_missed",
                title=f"schedule {name}: no successful run by the {deadline:%H:%M} deadline "
                f"for {interval:%Y-%m-%d %H:%M %Z}",
                text=f"interval {interval.isoformat()} had no successful run by "
                f"{deadline.isoformat()}" + (f" (its run ended {status})" if status else ""),
                run_id=record.get("last_run_id") if status else None,
                project=self.project,
                details={"schedule": name, "sla": "deadline", "interval": interval.isoformat(),
                         "deadline": deadline.isoformat(), "last_status": status},
            )])
        return reports

    # -- serving ------------------------------------------------------------------------

    def serve(self, stop: threading.Event | None = None, *, handle_signals: bool = False) -> None:
        """Run due schedules until ``stop`` is set (or SIGTERM/SIGINT with ``handle_signals``).

        A stop request never interrupts a run: the current run finishes, then ``serve``
        returns. With ``handle_signals`` (main thread only) a second SIGINT aborts at once.
        """
        if stop is not None:
            self._stop = stop
        restore = install_signal_handlers(self) if handle_signals else None
        try:
            while not self.stopping:
                try:
                    self.tick()
                except KeyboardInterrupt:
                    raise
                except Exception:  # keep serving: the next tick may well work
                    log.exception("scheduler tick failed")
                if self.stopping:
                    break
                self._wait(self.seconds_until_next())
        finally:
            if restore is not None:
                restore()
        log.info("scheduler stopped")

    def _wait(self, seconds: float) -> None:
        if self.sleep is not None:
            self.sleep(seconds)
            return
        remaining = seconds
        while remaining > 0 and not self._stop.wait(min(remaining, 1.0)):
            remaining -= 1.0


class Stoppable(Protocol):
    @property
    def stopping(self) -> bool: ...

    def stop(self) -> None: ...


def install_signal_handlers(target: Stoppable) -> Callable[[], None]:
    """SIGTERM/SIGINT ask for a graceful stop; a second SIGINT raises KeyboardInterrupt."""
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}

    def graceful(signum: int, _frame: Any) -> None:
        name = signal.Signals(signum).name
        if target.stopping and signum == signal.SIGINT:
            raise KeyboardInterrupt
        log.warning("%s received: stopping after the current run (Ctrl-C again to abort)", name)
        target.stop()

    for sig in previous:
        signal.signal(sig, graceful)

    def restore() -> None:
        for sig, handler in previous.items():
            signal.signal(sig, handler)

    return restore


def _fmt_duration(seconds: float) -> str:
    seconds = round(seconds, 3)
    if seconds < 60:
        return f"{seconds:g}s"
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"


def _duration_alert(project: str, name: str, interval: datetime, limit: timedelta,
                    seconds: float, run_id: str | None, *, finished: bool) -> Alert:
    verb = "took" if finished else "still running after"
    return Alert(
        kind="sla_missed",
        title=f"schedule {name}: run {verb} {_fmt_duration(seconds)}, over max_duration "
        f"{_fmt_duration(limit.total_seconds())}",
        text=f"interval {interval.isoformat()}" + (f", run {run_id}" if run_id else ""),
        run_id=run_id,
        project=project,
        details={"schedule": name, "sla": "max_duration", "interval": interval.isoformat(),
                 "seconds": round(seconds, 3), "limit_seconds": limit.total_seconds(),
                 "finished": finished},
    )


class _Watchdog:
    """Sends one ``sla_missed`` while a run is still going past ``max_duration``."""

    def __init__(self, scheduler: Scheduler, name: str, schedule: ScheduleConfig,
                 interval: datetime) -> None:
        self.scheduler = scheduler
        self.name = name
        self.limit = schedule.max_duration
        self.interval = interval
        self.reports: list[DeliveryReport] = []
        self._lock = threading.Lock()
        self._fired = False
        self._done = False
        self._timer: threading.Timer | None = None

    def start(self) -> None:
        if self.limit is None:
            return
        self._timer = threading.Timer(self.limit.total_seconds(), self._alarm)
        self._timer.daemon = True
        self._timer.name = f"headrace-sla-{self.name}"
        self._timer.start()

    def _alarm(self) -> None:
        with self._lock:
            if self._done:
                return
            self._fired = True
        assert self.limit is not None
        alert = _duration_alert(self.scheduler.project, self.name, self.interval, self.limit,
                                self.limit.total_seconds(), None, finished=False)
        self.reports += self.scheduler._send([alert])

    def finish(self) -> bool:
        """Stop watching; True when the alarm went off (its alert was sent, or is being sent)."""
        with self._lock:
            self._done = True
            fired = self._fired
        if self._timer is not None:
            self._timer.cancel()
            if fired:
                self._timer.join()
        return fired
