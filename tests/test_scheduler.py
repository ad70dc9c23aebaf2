"""The scheduler: due intervals and catch-up on an injected clock, cross-process overlap
refusal, SLA alerts to a real local webhook, and `headrace serve` as a real subprocess."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from headrace.observe.alerts import AlertSender
from headrace.project.config import ScheduleConfig, load_config
from headrace.runner.scheduler import (
    STATE_FILE,
    Scheduler,
    ScheduleState,
    deadline_for,
    fires_between,
    latest_fire,
)
from headrace.runner.state import StateStore

from conftest import BASE_TOML, Hook, cli, open_ws

PIPE = '''
import time
import headrace as hr
src = hr.files("data/a.csv", format="csv")

@hr.table("bronze.a", source=src, write="overwrite")
def a(raw, ctx):
    if (ctx.project_root / "FAIL").exists():
        raise ValueError("asked to fail")
    if (ctx.project_root / "SLOW").exists():
        (ctx.project_root / "started").write_text("1")
        time.sleep(3)
    return raw

@hr.table("silver.b", inputs={"a": "bronze.a"})
def b(a):
    return a

@hr.table("silver.c", inputs={"a": "bronze.a"})
def c(a):
    return a
'''
FILES = {"pipelines/p.py": PIPE, "data/a.csv": "id,v\n1,x\n2,y\n"}


class Clock:
    def __init__(self, start: datetime) -> None:
        self.now = start

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


def at(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def sched(cron: str, **kw: Any) -> ScheduleConfig:
    return ScheduleConfig(cron=cron, **kw)


def _no_workspace():
    raise AssertionError("due() must not open the project")


def _bare(tmp_path: Path, schedules: dict[str, ScheduleConfig], clock: Clock) -> Scheduler:
    return Scheduler(_no_workspace, schedules, clock=clock, state_path=tmp_path / "s.json", project="t")


def _fired(scheduler: Scheduler, name: str, when: datetime) -> None:
    scheduler.state.update(name, lambda r: r.update(last_fired=when.isoformat()))


# --------------------------------------------------------------------------- due / cron math


def test_first_sight_runs_only_the_latest_interval(tmp_path: Path) -> None:
    clock = Clock(at("2026-03-01T10:17:05"))
    s = _bare(tmp_path, {"q": sched("*/15 * * * *", catchup="all")}, clock)
    assert s.due() == [("q", at("2026-03-01T10:15:00"))]


def test_catchup_skip_runs_latest_missed_all_runs_each_in_order(tmp_path: Path) -> None:
    clock = Clock(at("2026-03-01T11:02:00"))
    s = _bare(tmp_path, {"skip": sched("*/15 * * * *"), "all": sched("*/15 * * * *", catchup="all")}, clock)
    for name in ("skip", "all"):
        _fired(s, name, at("2026-03-01T10:15:00"))
    due = s.due()
    assert [i for n, i in due if n == "skip"] == [at("2026-03-01T11:00:00")]
    assert [i for n, i in due if n == "all"] == [at("2026-03-01T10:30:00"), at("2026-03-01T10:45:00"),
                                                 at("2026-03-01T11:00:00")]
    assert [i for _, i in due] == sorted(i for _, i in due)  # oldest first overall
    clock.now = at("2026-03-01T10:29:59")
    assert s.due() == []  # nothing fired since 10:15


def test_fire_instant_and_timezone(tmp_path: Path) -> None:
    paris = sched("0 6 * * *", timezone="Europe/Paris")
    # 06:00 in Paris is 04:00 UTC in summer and 05:00 UTC in winter.
    assert latest_fire(paris, at("2026-07-01T04:00:00")) == at("2026-07-01T04:00:00")
    assert latest_fire(paris, at("2026-07-01T03:59:59")) == at("2026-06-30T04:00:00")
    assert latest_fire(paris, at("2026-01-10T12:00:00")) == at("2026-01-10T05:00:00")
    spring = fires_between(paris, at("2026-03-28T12:00:00"), at("2026-03-30T12:00:00"))
    assert spring == [at("2026-03-29T04:00:00"), at("2026-03-30T04:00:00")]  # across the DST switch
    s = _bare(tmp_path, {"p": paris}, Clock(at("2026-07-01T04:00:00")))
    assert s.due() == [("p", at("2026-07-01T04:00:00"))]


def test_disabled_schedules_and_wake_up_time(tmp_path: Path) -> None:
    clock = Clock(at("2026-03-01T10:14:50"))
    s = _bare(tmp_path, {"q": sched("*/15 * * * *"), "off": sched("* * * * *", enabled=False)}, clock)
    assert [n for n, _ in s.due()] == ["q"]
    assert s.seconds_until_next() == pytest.approx(10.0)
    clock.now = at("2026-03-01T10:15:01")
    assert s.seconds_until_next() == 30.0  # capped, so a changed clock is noticed
    daily = _bare(tmp_path, {"d": sched("0 6 * * *", deadline="05:59")}, Clock(at("2026-03-01T05:58:00")))
    assert daily.seconds_until_next() == pytest.approx(30.0)
    assert daily.seconds_until_next(at("2026-03-01T05:58:45")) == pytest.approx(15.0)  # the deadline


def test_deadline_falls_on_the_interval_day_or_the_next() -> None:
    s = sched("0 6 * * *", deadline="07:30", timezone="Europe/Paris")
    assert deadline_for(s, at("2026-07-01T04:00:00")) == at("2026-07-01T05:30:00")
    late = sched("0 23 * * *", deadline="01:00")
    assert deadline_for(late, at("2026-07-01T23:00:00")) == at("2026-07-02T01:00:00")
    assert deadline_for(sched("0 6 * * *"), at("2026-07-01T06:00:00")) is None


# --------------------------------------------------------------------------- runs on a project


def _project(make_project, schedules_toml: str, *, alerts: str = "", files: dict[str, str] | None = None) -> Path:
    return make_project({**FILES, **(files or {})}, toml=BASE_TOML + schedules_toml + alerts)


def _scheduler(root: Path, clock: Clock, **kw: Any) -> Scheduler:
    config = load_config(root)
    sender = AlertSender(config.alerts, backoff_seconds=0.01, cwd=root) if config.alerts else None
    return Scheduler(lambda: open_ws(root), config.schedules, clock=clock, sender=sender, **kw)


def _runs(root: Path) -> list[Any]:
    ws = open_ws(root)
    try:
        return list(reversed(ws.store.list_runs(100)))
    finally:
        ws.close()


def test_tick_runs_the_selection_and_remembers_it(make_project) -> None:
    root = _project(make_project, '\n[schedules.daily]\ncron = "0 6 * * *"\nselect = ["silver.b", "+silver.c"]\n')
    clock = Clock(at("2026-03-02T06:00:00"))
    s = _scheduler(root, clock)
    [run] = s.tick()
    assert (run.schedule, run.interval, run.status) == ("daily", at("2026-03-02T06:00:00"), "success")
    [record] = _runs(root)
    assert record.run_id == run.run_id and record.command == "schedule:daily"
    assert record.selection == ["silver.b", "+silver.c"] and record.tables_total == 3
    state = json.loads((root / STATE_FILE).read_text())["schedules"]["daily"]
    assert state["last_fired"] == "2026-03-02T06:00:00+00:00" and state["last_status"] == "success"
    assert state["last_run_id"] == run.run_id and state["running"] is None
    clock.advance(3600)
    assert s.tick() == []  # nothing new is due until tomorrow 06:00
    clock.now = at("2026-03-03T06:00:01")
    assert [r.interval for r in s.tick()] == [at("2026-03-03T06:00:00")]


def test_catchup_all_runs_every_missed_interval_in_order(make_project) -> None:
    root = _project(make_project, '\n[schedules.h]\ncron = "0 * * * *"\ncatchup = "all"\nselect = ["bronze.a"]\n')
    clock = Clock(at("2026-03-02T06:10:00"))
    s = _scheduler(root, clock)
    assert [r.status for r in s.tick()] == ["success"]
    clock.now = at("2026-03-02T09:05:00")  # the scheduler was down for three intervals
    runs = s.tick()
    assert [r.interval.hour for r in runs] == [7, 8, 9] and {r.status for r in runs} == {"success"}
    assert [r.command for r in _runs(root)] == ["schedule:h"] * 4


def test_catchup_skip_runs_only_the_latest(make_project) -> None:
    root = _project(make_project, '\n[schedules.h]\ncron = "0 * * * *"\nselect = ["bronze.a"]\n')
    clock = Clock(at("2026-03-02T06:10:00"))
    s = _scheduler(root, clock)
    s.tick()
    clock.now = at("2026-03-02T09:05:00")
    assert [r.interval.hour for r in s.tick()] == [9]
    assert len(_runs(root)) == 2


def test_overlap_refused_while_another_process_holds_the_schedule(make_project) -> None:
    root = _project(make_project, '\n[schedules.daily]\ncron = "0 6 * * *"\nselect = ["bronze.a"]\n')
    url = load_config(root).state_url
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import sys\nfrom headrace.runner.state import StateStore\n"
         f"store = StateStore.open({url!r})\n"
         "with store.lock('schedule:daily', owner='other serve', timeout=10):\n"
         "    print('locked', flush=True)\n    sys.stdin.readline()\n"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        clock = Clock(at("2026-03-02T06:00:00"))
        s = _scheduler(root, clock)
        [skipped] = s.tick()
        assert skipped.status == "locked" and skipped.ok and "other serve" in (skipped.error or "")
        assert _runs(root) == []
        assert "last_fired" not in ScheduleState(root / STATE_FILE).get("daily")
    finally:
        assert holder.stdin is not None
        holder.stdin.write("\n")
        holder.stdin.close()
        holder.wait(timeout=30)
    [ran] = s.tick()  # the interval is still due and now runs
    assert ran.status == "success" and ran.interval == at("2026-03-02T06:00:00")


def test_a_second_scheduler_does_not_rerun_a_fired_interval(make_project) -> None:
    root = _project(make_project, '\n[schedules.daily]\ncron = "0 6 * * *"\nselect = ["bronze.a"]\n')
    clock = Clock(at("2026-03-02T06:00:00"))
    first, second = _scheduler(root, clock), _scheduler(root, clock)
    due_before = second.due()
    assert [r.status for r in first.tick()] == ["success"]
    # `second` computed the same interval as due, but re-reads under the lock before running.
    assert second._run_schedule("daily", [i for _, i in due_before]) == []
    assert len(_runs(root)) == 1


def _alerts_toml(hook: Hook, **extra: str) -> str:
    lines = [f'webhook = "{hook.url}"', "retries = 1", *(f"{k} = {v}" for k, v in extra.items())]
    return "\n[alerts]\n" + "\n".join(lines) + "\n"


def test_failed_run_alerts_and_counts_as_fired(make_project, hook: Hook) -> None:
    root = _project(make_project, '\n[schedules.daily]\ncron = "0 6 * * *"\n',
                    alerts=_alerts_toml(hook), files={"FAIL": ""})
    clock = Clock(at("2026-03-02T06:00:00"))
    s = _scheduler(root, clock)
    [run] = s.tick()
    assert run.status == "failed" and not run.ok
    assert [r.alert.kind for r in run.alerts] == ["run_failed"] and run.alerts[0].delivered
    [body] = hook.bodies()
    assert body["run_id"] == run.run_id and "bronze.a" in body["text"] and "asked to fail" in body["text"]
    assert s.tick() == []  # fired: not retried in a loop (headrace retry RUN_ID does that)


def test_run_that_cannot_start_is_reported(make_project, hook: Hook) -> None:
    root = _project(make_project, '\n[schedules.daily]\ncron = "0 6 * * *"\nselect = ["gold.nope"]\n',
                    alerts=_alerts_toml(hook))
    s = _scheduler(root, Clock(at("2026-03-02T06:00:00")))
    [run] = s.tick()
    assert run.status == "error" and run.run_id is None and "gold.nope" in (run.error or "")
    [body] = hook.bodies()
    assert body["kind"] == "run_failed" and "could not start" in body["title"]
    assert ScheduleState(root / STATE_FILE).get("daily")["last_status"] == "error"


def test_sla_max_duration_alerts_once(make_project, hook: Hook) -> None:
    root = _project(make_project, '\n[schedules.daily]\ncron = "0 6 * * *"\nmax_duration = "1ms"\n',
                    alerts=_alerts_toml(hook))
    [run] = _scheduler(root, Clock(at("2026-03-02T06:00:00"))).tick()
    assert run.status == "success"
    [body] = hook.bodies()
    assert body["kind"] == "sla_missed" and "over max_duration" in body["title"]
    assert body["details"]["sla"] == "max_duration" and body["details"]["schedule"] == "daily"
    assert [r.alert.kind for r in run.alerts] == ["sla_missed"]


def test_sla_deadline_missed_alerts_once(make_project, hook: Hook) -> None:
    root = _project(make_project, '\n[schedules.daily]\ncron = "0 6 * * *"\ndeadline = "06:30"\n',
                    alerts=_alerts_toml(hook, on='["sla_missed"]'), files={"FAIL": ""})
    clock = Clock(at("2026-03-02T05:50:00"))
    s = _scheduler(root, clock)
    s.tick()  # first sight: yesterday's interval runs; its deadline had passed before: not judged
    clock.now = at("2026-03-02T06:00:00")
    assert [r.status for r in s.tick()] == ["failed"]
    clock.now = at("2026-03-02T06:29:59")
    s.tick()
    assert hook.bodies() == []
    clock.now = at("2026-03-02T06:31:00")
    s.tick()
    clock.now = at("2026-03-02T06:45:00")
    s.tick()
    [body] = hook.bodies()
    assert body["kind"] == "sla_missed" and body["details"]["sla"] == "deadline"
    assert body["details"]["interval"] == "2026-03-02T06:00:00+00:00"
    assert body["details"]["last_status"] == "failed" and "06:30 deadline" in body["title"]


def test_sla_deadline_met_or_late(make_project, hook: Hook) -> None:
    root = _project(make_project, '\n[schedules.daily]\ncron = "0 6 * * *"\ndeadline = "06:30"\n',
                    alerts=_alerts_toml(hook))
    clock = Clock(at("2026-03-02T05:50:00"))
    s = _scheduler(root, clock)
    s.tick()
    clock.now = at("2026-03-02T06:00:00")
    s.tick()  # succeeds at 06:00
    clock.now = at("2026-03-02T07:00:00")
    s.tick()
    assert hook.bodies() == []
    clock.now = at("2026-03-03T07:00:00")  # down through the next 06:00 and its deadline
    [late] = s.tick()
    assert late.status == "success"
    [body] = hook.bodies()
    assert body["kind"] == "sla_missed" and body["details"]["interval"] == "2026-03-03T06:00:00+00:00"


def test_serve_loop_wakes_at_fire_times_and_stops(make_project) -> None:
    root = _project(make_project, '\n[schedules.m]\ncron = "*/5 * * * *"\nselect = ["bronze.a"]\n')
    clock = Clock(at("2026-03-02T06:00:30"))
    sleeps: list[float] = []

    def sleep(seconds: float) -> None:
        sleeps.append(seconds)
        clock.advance(seconds)
        if len(sleeps) == 3:
            s.stop()

    s = _scheduler(root, clock, sleep=sleep, max_wait=600)
    s.serve()
    assert sleeps == [270.0, 300.0, 300.0]
    state = ScheduleState(root / STATE_FILE).get("m")
    assert state["last_fired"] == "2026-03-02T06:10:00+00:00"
    assert len(_runs(root)) == 3


# --------------------------------------------------------------------------- the CLI


@pytest.mark.slow
def test_cli_serve_once_and_schedules(make_project) -> None:
    root = _project(make_project, '\n[schedules.daily]\ncron = "0 6 * * *"\nselect = ["bronze.a"]\n'
                    'deadline = "07:30"\n[schedules.off]\ncron = "* * * * *"\nenabled = false\n')
    first = cli(root, "serve", "--once", "--json")
    assert first.returncode == 0, first.stderr
    [run] = json.loads(first.stdout)["runs"]
    assert run["schedule"] == "daily" and run["status"] == "success" and run["tables"] == 1
    again = cli(root, "serve", "--once")
    assert again.returncode == 0 and "nothing is due" in again.stdout
    listed = {s["schedule"]: s for s in json.loads(cli(root, "schedules", "--json").stdout)}
    assert listed["daily"]["last_run_id"] == run["run_id"] and listed["daily"]["last_status"] == "success"
    assert listed["daily"]["next_fire"].endswith("06:00:00+00:00") and listed["daily"]["deadline"] == "07:30:00"
    assert listed["off"]["enabled"] is False and listed["off"]["next_fire"] is None
    table = cli(root, "schedules")
    assert "daily" in table.stdout and "success" in table.stdout and "disabled" in table.stdout


def test_cli_serve_once_exit_code_and_no_schedules(make_project) -> None:
    root = _project(make_project, '\n[schedules.daily]\ncron = "0 6 * * *"\n', files={"FAIL": ""})
    failed = cli(root, "serve", "--once")
    assert failed.returncode == 1 and "failed" in failed.stdout
    bare = make_project(FILES, name="bare")
    proc = cli(bare, "serve", "--once")
    assert proc.returncode == 2 and "defines no schedules" in proc.stderr and "[schedules.daily]" in proc.stderr
    assert cli(bare, "schedules").stdout.startswith("no schedules")


@pytest.mark.slow
def test_cli_serve_sigterm_finishes_the_current_run_then_exits_0(make_project) -> None:
    root = _project(make_project, '\n[schedules.every]\ncron = "* * * * *"\n', files={"SLOW": ""})
    proc = subprocess.Popen(
        [sys.executable, "-m", "headrace", "--project", str(root), "serve"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "COLUMNS": "200"},
    )
    try:
        deadline = time.monotonic() + 60
        while not (root / "started").exists():
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "the scheduled run never started"
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)  # mid-run: the table sleeps for 3 s
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    assert "SIGTERM received" in err and "scheduler stopped" in err
    assert "schedule every @" in out and "success" in out
    with StateStore.open(load_config(root).state_url) as store:
        [record] = store.list_runs()
    assert record.status == "success" and record.command == "schedule:every"
    state = ScheduleState(root / STATE_FILE).get("every")
    assert state["last_status"] == "success" and state["running"] is None
