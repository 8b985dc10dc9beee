"""The dev host's timer trigger: the schedule monitor, and with Azurite past due, run on startup, one firer among
hosts."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import time
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from azure.core.exceptions import ResourceExistsError
from azure.storage.blob import BlobClient, BlobServiceClient
from azure.storage.blob.aio import BlobLeaseClient
from azure.storage.blob.aio import BlobServiceClient as AsyncBlobServiceClient

from devhost.app_loader import FunctionSpec
from devhost.invocation import Invoker
from devhost.schedule import Schedule
from devhost.settings import SingletonOptions
from devhost.timer_trigger import TimerListener, uses_monitor
from sluice.launcher import Running, start
from tests.devhost.test_eventhubs import read_records, wait_for
from tests.fixtures.azurite import AZURITE, connection_string, free_port, start_azurite
from tests.fixtures.devhost import start_devhost, write_app

APP = '''
import json, os, threading, time
import azure.functions as func

app = func.FunctionApp()
_lock = threading.Lock()


def write(record):
    with _lock, open(os.environ["TEST_OUT"], "a", encoding="utf-8") as f:
        f.write(json.dumps(record) + "\\n")


@app.function_name("tick")
@app.timer_trigger(schedule="%TICK_SCHEDULE%", arg_name="timer", use_monitor=True)
def tick(timer: func.TimerRequest) -> None:
    write({"function": "tick", "pid": os.getpid(), "at": time.time(), "past_due": timer.past_due,
           "status": timer.schedule_status})


@app.function_name("startup")
@app.timer_trigger(schedule="0 0 0 1 1 *", arg_name="timer", run_on_startup=True)
async def startup(timer: func.TimerRequest) -> None:
    write({"function": "startup", "pid": os.getpid(), "at": time.time(), "past_due": timer.past_due})
'''

HOST_JSON = {"version": "2.0", "singleton": {"listenerLockPeriod": "00:00:15",
                                             "listenerLockRecoveryPollingInterval": "00:00:01"}}


def every_second_with_the_monitor() -> str:
    """Every second, except in an hour twelve hours from now: the host turns the schedule monitor off for a schedule
    whose fields from minutes on are all "every" and that fires more than once a minute, whatever ``use_monitor``
    says; leaving one hour out keeps it on."""
    skipped = (datetime.now(UTC).hour + 12) % 24
    return "* * " + ",".join(str(hour) for hour in range(24) if hour != skipped) + " * * *"


def _ticking_app(tmp_path: Path, storage: str, status: str) -> tuple[Path, Path, BlobClient]:
    """The app with `tick` firing every second (monitor on) under a host id of its own, whose status blob holds
    ``status``; returns the records file, the settings and the status blob."""
    out = tmp_path / "records.jsonl"
    host_id = f"devhost-test-{uuid.uuid4().hex[:12]}"
    settings = write_app(tmp_path / "app", APP, host_json=HOST_JSON, values={
        "AzureWebJobsStorage": storage, "TEST_OUT": str(out),
        "TICK_SCHEDULE": every_second_with_the_monitor(), "AzureFunctionsWebHost__hostid": host_id,
    })
    service = BlobServiceClient.from_connection_string(storage)
    with contextlib.suppress(ResourceExistsError):  # another test made it
        service.create_container("azure-webjobs-hosts")
    blob = service.get_blob_client("azure-webjobs-hosts", f"timers/{host_id}/Host.Functions.tick/status")
    blob.upload_blob(status, overwrite=True)
    return out, settings, blob


@pytest.mark.timeout(120)
def test_timer_fires_once_per_occurrence_across_two_hosts(
    tmp_path: Path, azurite_connection_string: str, devhost_factory: Any,
) -> None:
    # A status left by an earlier run of this schedule whose next occurrence is long gone: the first run is past due.
    # (Whole seconds: a Next the schedule would not give after Last is a status of another schedule, not past due.)
    hour_ago = (datetime.now(UTC) - timedelta(hours=1)).replace(microsecond=0)
    status = {"Last": (hour_ago - timedelta(seconds=1)).isoformat(), "Next": hour_ago.isoformat(),
              "LastUpdated": hour_ago.isoformat()}
    out, settings, blob = _ticking_app(tmp_path, azurite_connection_string, json.dumps(status))

    first = devhost_factory(tmp_path / "app", settings=settings)
    second = devhost_factory(tmp_path / "app", settings=settings)
    ticks = wait_for(lambda: (t := [r for r in read_records(out) if r["function"] == "tick"]) and len(t) >= 4 and t,
                     45, "four ticks", first)
    assert ticks[0]["past_due"] is True
    assert datetime.fromisoformat(ticks[0]["status"]["Next"]) == hour_ago
    assert [t["past_due"] for t in ticks[1:]] == [False] * (len(ticks) - 1)
    leader = ticks[0]["pid"]
    assert {t["pid"] for t in ticks} == {leader}, "only the lease holder fires"
    occurrences = [t["status"]["Next"] for t in ticks[1:]]  # the occurrence each run was for
    assert len(occurrences) == len(set(occurrences)), f"an occurrence fired twice: {occurrences}"
    assert all(t["at"] >= datetime.fromisoformat(t["status"]["Next"]).timestamp() for t in ticks[1:])
    startups = [r for r in read_records(out) if r["function"] == "startup"]
    assert len(startups) == 1 and startups[0]["past_due"] is False

    # The status blob follows the runs.
    saved = json.loads(blob.download_blob().readall())
    assert datetime.fromisoformat(saved["Next"]) > hour_ago + timedelta(minutes=59)

    # The leader stops (releasing the lease): the other host takes over.
    leading, other = (first, second) if first.process.pid == leader else (second, first)
    assert leading.stop(stop_timeout=30) == 0
    wait_for(lambda: [r for r in read_records(out) if r["function"] == "tick" and r["pid"] == other.process.pid],
             30, "the other host to fire", other)
    assert other.alive()


@pytest.mark.timeout(90)
@pytest.mark.parametrize("status", ["[1, 2]", '{"Last": null, "Next": "soon"}', '{"Next": 1700000000}'],
                         ids=["not-an-object", "next-not-a-moment", "next-a-number"])
def test_an_unreadable_status_blob_is_ignored_and_the_timer_fires(
    tmp_path: Path, azurite_connection_string: str, devhost_factory: Any, status: str,
) -> None:
    """A status the host cannot read is treated as none, with a warning; before, a JSON value that was not an
    object, or a Next that was not an ISO moment, failed the timer's loop at every tick and it never fired."""
    out, settings, blob = _ticking_app(tmp_path, azurite_connection_string, status)

    host = devhost_factory(tmp_path / "app", settings=settings)
    ticks = wait_for(lambda: (t := [r for r in read_records(out) if r["function"] == "tick"]) and len(t) >= 2 and t,
                     30, "two ticks", host)
    assert ticks[0]["past_due"] is False
    assert "Functions.tick: unreadable timer status blob" in host.output()
    assert datetime.fromisoformat(json.loads(blob.download_blob().readall())["Next"]) > datetime.now(UTC) - \
        timedelta(seconds=30), "the status is written again"


@pytest.mark.parametrize("trigger, expression, monitored", [
    ({}, "0 */5 * * * *", True),
    ({}, "*/10 * 9-17 * * *", True),  # the hour is restricted: the gaps can be longer than a minute
    ({}, "*/30 * * * * *", False),  # :00 and :30 both fall in the minute after a moment that is no whole minute
    ({}, "0,30 * * * * *", False),
    ({}, "30 * * * * *", True),  # once a minute
    ({}, "0 * * * * *", True),
    ({}, "* * * * *", True),  # five fields: every minute, at second 0
    ({}, "* * * * * *", False),
    ({}, "*/5 * 0-23 1-31 * 0-6", False),  # whole ranges are wildcards
    ({"useMonitor": True}, "*/5 * * * * *", False),  # the host overrides an explicit true
    ({"useMonitor": "false"}, "0 0 0 * * *", False),
    ({}, "00:00:30", False),
    ({}, "00:01:00", True),
])
def test_the_schedule_monitor_is_on_unless_the_schedule_is_more_frequent_than_a_minute(
    trigger: dict[str, Any], expression: str, monitored: bool,
) -> None:
    """ext: TimerTriggerAttribute.UseMonitor defaults to true; TimerSchedule.Create turns it off ('UseMonitor changed
    to false based on schedule frequency') for a TimeSpan under a minute, and for a cron schedule when
    ShouldDisableScheduleMonitor holds: every field from minutes on is '*' and there is more than one occurrence in
    the next minute. That minute starts at DateTime.Now, which is no whole minute (nor a whole second), so the
    count is the number of seconds the schedule names: ``*/30`` (:00 and :30) has two and no monitor."""
    assert uses_monitor(trigger, Schedule.parse(expression)) is monitored


ONE_TIMER_APP = '''
import json, os, time
import azure.functions as func

app = func.FunctionApp()


@app.function_name("tick")
@app.timer_trigger(schedule="%TICK_SCHEDULE%", arg_name="timer")
def tick(timer: func.TimerRequest) -> None:
    with open(os.environ["TEST_OUT"], "a", encoding="utf-8") as f:
        f.write(json.dumps({"at": time.time(), "past_due": timer.past_due, "status": timer.schedule_status,
                            "pid": os.getpid()}) + "\\n")
'''


def _one_timer_app(tmp_path: Path, storage: str, schedule: str, status: dict[str, Any] | None) -> tuple[Path, Path]:
    """ONE_TIMER_APP with ``schedule`` under a host id of its own, with ``status`` in its status blob (None: no blob);
    returns the records file and the settings."""
    out = tmp_path / "records.jsonl"
    host_id = f"devhost-test-{uuid.uuid4().hex[:12]}"
    settings = write_app(tmp_path / "app", ONE_TIMER_APP, values={
        "AzureWebJobsStorage": storage, "TEST_OUT": str(out), "TICK_SCHEDULE": schedule,
        "AzureFunctionsWebHost__hostid": host_id,
    })
    if status is not None:
        service = BlobServiceClient.from_connection_string(storage)
        with contextlib.suppress(ResourceExistsError):
            service.create_container("azure-webjobs-hosts")
        service.get_blob_client("azure-webjobs-hosts", f"timers/{host_id}/Host.Functions.tick/status") \
            .upload_blob(json.dumps(status), overwrite=True)
    return out, settings


@pytest.mark.timeout(90)
def test_a_changed_schedule_is_not_past_due(tmp_path: Path, azurite_connection_string: str,
                                             devhost_factory: Any) -> None:
    """ext: ScheduleMonitor.CheckPastDueAsync recomputes the expected Next from the status' Last with the current
    schedule; when that differs from the recorded Next the schedule changed: the status is rewritten (Next from the
    new schedule, from now if already past) and the timer is not past due. Here an hourly schedule left the status
    (Next an hour ago) and the schedule is now yearly: nothing fires."""
    now = datetime.now(UTC)
    status = {"Last": (now - timedelta(hours=2)).isoformat(), "Next": (now - timedelta(hours=1)).isoformat(),
              "LastUpdated": (now - timedelta(hours=2)).isoformat()}
    out, settings = _one_timer_app(tmp_path, azurite_connection_string, "0 0 0 1 1 *", status)
    host = devhost_factory(tmp_path / "app", settings=settings)
    time.sleep(6)
    assert read_records(out) == [], host.output()


@pytest.mark.timeout(60)
def test_an_occurrence_missed_after_a_schedule_change_is_past_due_on_the_next_start(
    tmp_path: Path, azurite_connection_string: str,
) -> None:
    """ext: when CheckPastDueAsync finds the schedule changed, it rewrites the status with ``Last`` cleared, Next
    from the new schedule and LastUpdated the moment that Next was counted from; the next start finds the same Next
    from LastUpdated, so a Next that passed meanwhile is past due. Interleaving: a daily timer last ran at 00:00 and
    becomes hourly; start 1 at 10:30 rewrites the status with Next 11:00; the host stops before then and starts
    again at 11:30: the 11:00 run was missed and runs now. With the old Last kept, start 2 took the status for
    another schedule change and the occurrence was lost."""
    hourly = Schedule.parse("0 0 * * * *")
    start_1 = datetime(2026, 12, 7, 10, 30, tzinfo=UTC)
    midnight = start_1.replace(hour=0, minute=0)
    daily_status = {"Last": midnight.isoformat(), "Next": (midnight + timedelta(days=1)).isoformat(),
                    "LastUpdated": midnight.isoformat()}
    spec = FunctionSpec(name="tick", trigger_type="timerTrigger", trigger={"name": "timer", "schedule": "0 0 * * * *"},
                        user_function=lambda timer: None, is_async=False, accepts_context=False, retry=None)

    async def scenario() -> tuple[bool, dict[str, Any] | None, bool]:
        async with AsyncBlobServiceClient.from_connection_string(azurite_connection_string) as service:
            with contextlib.suppress(ResourceExistsError):
                await service.create_container("azure-webjobs-hosts")
            timer = TimerListener(spec, hourly, Invoker(tmp_path, threads=1), service,
                                  f"devhost-test-{uuid.uuid4().hex[:12]}", SingletonOptions())
            await service.get_blob_client("azure-webjobs-hosts", timer._status_blob).upload_blob(
                json.dumps(daily_status), overwrite=True)
            changed = start_1 > await timer._check_status(start_1, await timer._read_status())
            rewritten = await timer._read_status()
            start_2 = start_1 + timedelta(hours=1)
            return changed, rewritten, start_2 > await timer._check_status(start_2, rewritten)

    past_due_at_start_1, rewritten, past_due_at_start_2 = asyncio.run(scenario())
    assert not past_due_at_start_1  # a changed schedule
    assert rewritten == {"Last": None, "Next": start_1.replace(hour=11, minute=0).isoformat(),
                         "LastUpdated": start_1.isoformat()}
    assert past_due_at_start_2, "the occurrence missed between the two starts was not past due"


@contextlib.asynccontextmanager
async def _listener(connection_string: str, spec: FunctionSpec, schedule: Schedule, tmp_path: Path,
                    singleton: SingletonOptions | None = None,
                    ) -> AsyncIterator[tuple[AsyncBlobServiceClient, TimerListener]]:
    """A timer listener of its own host id on Azurite's ``azure-webjobs-hosts``, and the blob service it uses."""
    async with AsyncBlobServiceClient.from_connection_string(connection_string) as service:
        with contextlib.suppress(ResourceExistsError):
            await service.create_container("azure-webjobs-hosts")
        yield service, TimerListener(spec, schedule, Invoker(tmp_path, threads=1), service,
                                     f"devhost-test-{uuid.uuid4().hex[:12]}", singleton or SingletonOptions())


async def _until_the_first_wait(timer: TimerListener, monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """Run the listener's start (status check, startup run) and stop it at its first wait: that wait, in seconds.
    The listener fires only while it knows it holds the lease: it is given one for the hour, as after an acquire."""
    waits: list[float] = []
    timer._held_until = asyncio.get_running_loop().time() + 3600

    async def first_wait_then_stop(seconds: float, *, until_lost: bool = False) -> None:
        waits.append(seconds)
        timer._stopping.set()

    monkeypatch.setattr(timer, "_sleep", first_wait_then_stop)
    await timer._fire_while_leader()
    return waits


@pytest.mark.timeout(60)
@pytest.mark.parametrize("status_ago, first_wait", [
    # Every hour until now, every half hour from now; the last run 45 minutes ago: its Next under the new schedule
    # (15 minutes ago) has passed, so the rewritten status counts from now.
    pytest.param({"Last": 45, "Next": -15, "LastUpdated": 45}, timedelta(minutes=30), id="interval-shortened"),
    # Every half hour, started 10 minutes ago and stopped before the first run: that run is 20 minutes away.
    pytest.param({"Last": None, "Next": -20, "LastUpdated": 10}, timedelta(minutes=20),
                 id="restarted-before-the-first-run"),
])
def test_a_monitored_interval_timer_first_waits_for_the_status_next(
    tmp_path: Path, azurite_connection_string: str, monkeypatch: pytest.MonkeyPatch,
    status_ago: dict[str, int | None], first_wait: timedelta,
) -> None:
    """ext: TimerListener.StartAsync, when the start is neither past due nor run on startup, calls
    ``StartTimer(DateTimeOffset.Now)``: the wait is ``ScheduleStatus.Next - now``, Next being the status as
    CheckPastDueAsync left it, not one interval from the start. ``status_ago`` gives each moment in minutes before
    the start (negative: after it). A shortened TimeSpan whose new Next has passed waits a whole new interval,
    where the dev host fired at once (from the old Last); a timer restarted before its first run waits for the
    Next counted from LastUpdated, where the dev host waited one interval from the restart."""
    start = datetime(2026, 12, 7, 10, 0, tzinfo=UTC)
    blob_status = {key: None if ago is None else (start - timedelta(minutes=ago)).isoformat()
                   for key, ago in status_ago.items()}
    spec = FunctionSpec(name="tick", trigger_type="timerTrigger", trigger={"name": "timer", "schedule": "00:30:00"},
                        user_function=lambda timer: None, is_async=False, accepts_context=False, retry=None)
    monkeypatch.setattr("devhost.timer_trigger.datetime", SimpleNamespace(
        now=lambda tz=None: start, fromisoformat=datetime.fromisoformat))

    async def scenario() -> list[float]:
        async with _listener(azurite_connection_string, spec, Schedule.parse("00:30:00"), tmp_path) as (service, timer):
            await service.get_blob_client("azure-webjobs-hosts", timer._status_blob).upload_blob(
                json.dumps(blob_status), overwrite=True)
            return await _until_the_first_wait(timer, monkeypatch)

    assert asyncio.run(scenario()) == [first_wait.total_seconds()]


@pytest.mark.timeout(60)
def test_run_on_startup_with_the_monitor_on_a_first_start_sees_the_next_occurrence(
    tmp_path: Path, azurite_connection_string: str, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """ext: TimerListener.StartAsync, when there is no status yet (first start), sets ``ScheduleStatus`` to
    ``{Last: default, Next: GetNextOccurrence(now), LastUpdated: default}``, and the run-on-startup invocation hands
    it to TimerInfo because the monitor is on. The dev host wrote the status blob and gave the function ``{}``:
    ``timer.schedule_status["Next"]`` worked in Azure and raised KeyError locally."""
    seen: list[Any] = []
    spec = FunctionSpec(name="tick", trigger_type="timerTrigger",
                        trigger={"name": "timer", "schedule": "0 0 0 1 1 *", "runOnStartup": True},
                        user_function=lambda timer: seen.append(timer), is_async=False, accepts_context=False,
                        retry=None)
    schedule = Schedule.parse("0 0 0 1 1 *")

    async def scenario() -> None:
        async with _listener(azurite_connection_string, spec, schedule, tmp_path) as (_, timer):
            assert timer.use_monitor and timer.run_on_startup
            await _until_the_first_wait(timer, monkeypatch)

    before = datetime.now(UTC)
    asyncio.run(scenario())
    assert len(seen) == 1 and seen[0].past_due is False
    status = seen[0].schedule_status
    expected_next = schedule.next_after(before)
    assert status == {"Last": None, "Next": expected_next.isoformat(), "LastUpdated": None}


@pytest.mark.timeout(60)
def test_a_schedule_that_never_occurs_waits_without_failing(
    tmp_path: Path, azurite_connection_string: str, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """NCrontab accepts April 31 and its GetNextOccurrence gives DateTime.MaxValue: the host's timer never fires. The
    dev host's listener failed with croniter's CroniterBadDateError at every polling interval, forever; now it
    records that Next and waits for it."""
    spec = FunctionSpec(name="tick", trigger_type="timerTrigger", trigger={"name": "timer", "schedule": "0 0 0 31 4 *"},
                        user_function=lambda timer: None, is_async=False, accepts_context=False, retry=None)

    async def scenario() -> tuple[list[float], dict[str, Any]]:
        async with _listener(azurite_connection_string, spec, Schedule.parse("0 0 0 31 4 *"), tmp_path) as (service,
                                                                                                           timer):
            waits = await _until_the_first_wait(timer, monkeypatch)
            blob = await service.get_blob_client("azure-webjobs-hosts", timer._status_blob).download_blob()
            return waits, json.loads(await blob.readall())

    waits, status = asyncio.run(scenario())
    assert len(waits) == 1 and waits[0] > timedelta(days=365 * 7000).total_seconds()
    assert status["Next"].startswith("9999-12-31T23:59:59")


@pytest.mark.timeout(90)
def test_without_the_monitor_the_function_sees_no_schedule_status(tmp_path: Path, azurite_connection_string: str,
                                                                  devhost_factory: Any) -> None:
    """ext: TimerListener.InvokeJobFunction passes no ScheduleStatus to TimerInfo when there is no ScheduleMonitor;
    lib: TimerRequest turns a null ScheduleStatus into {}. '* * * * * *' has the monitor off."""
    out, settings = _one_timer_app(tmp_path, azurite_connection_string, "* * * * * *", None)
    host = devhost_factory(tmp_path / "app", settings=settings)
    records = wait_for(lambda: read_records(out), 30, "a tick", host)
    assert records[0]["status"] == {} and records[0]["past_due"] is False


SLOW_TIMER_APP = '''
import json, os, time
import azure.functions as func

app = func.FunctionApp()


@app.function_name("slow")
@app.timer_trigger(schedule="*/3 * * * * *", arg_name="timer", use_monitor=False)
def slow(timer: func.TimerRequest) -> None:
    path = os.environ["TEST_OUT"]
    first = not os.path.exists(path)
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps({"at": time.time()}) + "\\n")
    if first:
        time.sleep(3.5)  # longer than the 3 s period: the next occurrence comes due while this runs
'''


@pytest.mark.timeout(90)
def test_an_occurrence_due_during_a_long_invocation_runs_as_soon_as_it_ends(
    tmp_path: Path, azurite_connection_string: str, devhost_factory: Any,
) -> None:
    """ext: an occurrence that comes due while the previous invocation still runs fires as soon as it ends.

    The extension's ``TimerListener.InvokeJobFunction`` records ``Next = GetNextOccurrence(invocation time)`` when
    an invocation ends, and ``HandleTimerEvent`` then calls ``StartTimer(DateTimeOffset.Now)``, whose
    ``GetNextTimerInterval(Next, now)`` turns a Next already past into one tick ("If the interval happens to be
    negative ... for an immediate invocation"). So in Azure a ``*/3`` timer whose run takes 3.5 s runs again at
    once, about 3.5 s after the first start. Computing the next occurrence after the run's end instead would drop
    the due occurrence and start the next run 6 s after the first."""
    out = tmp_path / "records.jsonl"
    settings = write_app(tmp_path / "app", SLOW_TIMER_APP, values={
        "AzureWebJobsStorage": azurite_connection_string, "TEST_OUT": str(out),
        "AzureFunctionsWebHost__hostid": f"devhost-test-{uuid.uuid4().hex[:12]}",
    })
    host = devhost_factory(tmp_path / "app", settings=settings)
    runs = wait_for(lambda: (r := read_records(out)) and len(r) >= 2 and r, 40, "two runs", host)
    gap = runs[1]["at"] - runs[0]["at"]
    assert 3.5 <= gap < 4.75, f"the second run started {gap:.2f}s after the first; the host runs the due one once " \
        "the first has ended"


DISABLED_APP = """
import json, os, time
import azure.functions as func

app = func.FunctionApp()


def write(name):
    with open(os.environ["TEST_OUT"], "a", encoding="utf-8") as f:
        f.write(json.dumps({"function": name, "at": time.time()}) + "\\n")


@app.function_name("enabled_tick")
@app.timer_trigger(schedule="0 0 0 1 1 *", arg_name="timer", run_on_startup=True, use_monitor=False)
def enabled_tick(timer: func.TimerRequest) -> None:
    write("enabled_tick")


@app.function_name("disabled_tick")
@app.timer_trigger(schedule="0 0 0 1 1 *", arg_name="timer", run_on_startup=True, use_monitor=False)
def disabled_tick(timer: func.TimerRequest) -> None:
    write("disabled_tick")
"""


@pytest.mark.timeout(90)
def test_a_disabled_timer_never_fires(tmp_path: Path, azurite_connection_string: str, devhost_factory: Any) -> None:
    """host: with AzureWebJobs.<name>.Disabled=true (disable-function; local.settings.json Values for Core Tools) the
    function's listener is not started, so a run_on_startup timer does not run while its enabled twin does: a timer
    switched off in production (during a migration, say) must not run on the dev host either."""
    out = tmp_path / "records.jsonl"
    settings = write_app(tmp_path / "app", DISABLED_APP, values={
        "AzureWebJobsStorage": azurite_connection_string, "TEST_OUT": str(out),
        "AzureFunctionsWebHost__hostid": f"disabled-{uuid.uuid4().hex[:12]}",
        "AzureWebJobs.disabled_tick.Disabled": "true",
    })
    host = devhost_factory(tmp_path / "app", settings=settings)
    wait_for(lambda: [r for r in read_records(out) if r["function"] == "enabled_tick"], 30, "enabled_tick", host)
    time.sleep(2)  # both listeners start together: give the disabled one the same chance
    assert sorted({r["function"] for r in read_records(out)}) == ["enabled_tick"], host.output()


@pytest.mark.timeout(90)
@pytest.mark.parametrize("setting", ["AzureFunctionsWebHost__hostId", "AzureFunctionsWebHost:hostid"])
def test_the_timer_lease_is_taken_under_the_host_id_however_its_setting_is_spelled(
        tmp_path: Path, azurite_connection_string: str, devhost_factory: Any, setting: str) -> None:
    """host: the host id (scope of the timer leases and status blobs) is read through .NET configuration, any case
    and ``__`` as ``:``. Only ``AzureFunctionsWebHost__hostid`` was read: with ``__hostId`` (as often written) or the
    configuration key itself, dev hosts meant to share timer leases (k8s-keda sets one id for every pod) each took a
    lease of their own, and all fired."""
    wanted = f"hostid-{uuid.uuid4().hex[:12]}"
    out = tmp_path / "records.jsonl"
    settings = write_app(tmp_path / "app", DISABLED_APP, values={
        "AzureWebJobsStorage": azurite_connection_string, "TEST_OUT": str(out), setting: wanted,
        "AzureWebJobs.disabled_tick.Disabled": "true"})
    host = devhost_factory(tmp_path / "app", settings=settings)
    wait_for(lambda: [r for r in read_records(out) if r["function"] == "enabled_tick"], 30, "enabled_tick", host)
    with BlobServiceClient.from_connection_string(azurite_connection_string) as service:
        container = service.get_container_client("azure-webjobs-hosts")
        leases = [blob.name for blob in container.list_blobs(name_starts_with="locks/")
                  if blob.name.endswith("/Host.Functions.enabled_tick.Listener")]
    assert f"locks/{wanted}/Host.Functions.enabled_tick.Listener" in leases, leases


def _azurite_on(port: int) -> Running:
    return start("azurite", [str(AZURITE), "--inMemoryPersistence", "--skipApiVersionCheck", "--loose",
                             "--disableTelemetry", "--blobHost", "127.0.0.1", "--blobPort", str(port)],
                 timeout=60, ready=re.compile(r"listens on https?://(?P<host>[\d.]+):(?P<port>\d+)"))


def _outage_app(tmp_path: Path, port: int) -> tuple[Path, Path]:
    out = tmp_path / "ticks.jsonl"
    settings = write_app(tmp_path / "app", ONE_TIMER_APP, host_json=HOST_JSON, values={
        "AzureWebJobsStorage": connection_string(port), "TEST_OUT": str(out), "TICK_SCHEDULE": "*/2 * * * * *",
        "AzureFunctionsWebHost__hostid": f"outage-{port}"})
    return settings, out


@pytest.mark.timeout(240)
def test_the_timer_keeps_polling_for_its_lease_while_storage_is_unreachable(tmp_path: Path) -> None:
    """Storage is not up when the dev host starts (or it restarts, or the network blips): once it is reachable the
    timer fires, as the host's listener keeps polling. Before, the first connection error (a ServiceRequestError after
    the SDK's retries, about 86 s against a closed port) ended the timer's task, silently, for good."""
    port = free_port()
    settings, out = _outage_app(tmp_path, port)
    host = start_devhost(tmp_path / "app", settings=settings)
    azurite = None
    try:
        time.sleep(100)  # the SDK's retries of the first lease attempt end before this
        assert host.alive()
        assert "Functions.tick: cannot reach storage for the timer lease" in host.output()
        azurite = _azurite_on(port)
        wait_for(lambda: read_records(out), 45, "a tick once storage is reachable", host)
    finally:
        host.stop(stop_timeout=20)
        if azurite is not None:
            azurite.stop()


@pytest.mark.timeout(300)
def test_a_host_whose_lease_renewal_failed_on_a_connection_error_stops_firing(tmp_path: Path) -> None:
    """Host A holds the timer lease; storage becomes unreachable for longer than the lease (15 s) and the SDK's
    retries of one renewal (about 86 s), so the lease is gone. When storage is back (empty: in-memory) with hosts A
    and B running, either may take the lease, and only that one fires: A must have stopped firing when it could no
    longer know it held the lease. Before, a connection error ended A's renewal task without marking the lease lost,
    and A fired on next to B, twice per occurrence."""
    port = free_port()
    settings, out = _outage_app(tmp_path, port)
    azurite: Running | None = _azurite_on(port)
    hosts = []
    try:
        hosts.append(start_devhost(tmp_path / "app", settings=settings))
        a = hosts[0].process.pid
        wait_for(lambda: [r for r in read_records(out) if r["pid"] == a], 20, "host A ticking", hosts[0])
        assert azurite is not None
        azurite.stop()
        azurite = None
        time.sleep(100)
        assert "Functions.tick: lost the timer lease" in hosts[0].output()
        azurite = _azurite_on(port)
        hosts.append(start_devhost(tmp_path / "app", settings=settings))
        back = time.time()
        wait_for(lambda: [r for r in read_records(out) if r["at"] >= back], 45, "a tick once storage is back",
                 hosts[1])
        both_from = time.time()
        time.sleep(8)
        pids = {r["pid"] for r in read_records(out) if r["at"] >= both_from}
        assert len(pids) == 1, f"hosts {sorted(pids)} (A is {a}) fired while one of them held the lease"
    finally:
        for host in hosts:
            host.stop(stop_timeout=20)
        if azurite is not None:
            azurite.stop()


YEARLY = "0 0 0 1 1 *"


def _yearly(fired: list[object], **trigger: object) -> FunctionSpec:
    """A timer function, due once a year (never during a test), that records each call."""
    return FunctionSpec(name="tick", trigger_type="timerTrigger",
                        trigger={"name": "timer", "schedule": YEARLY, "useMonitor": False, **trigger},
                        user_function=lambda timer: fired.append(timer), is_async=False, accepts_context=False,
                        retry=None)


async def _until(predicate: Callable[[], bool], seconds: float, what: str) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


@pytest.mark.timeout(90)
def test_after_losing_the_lease_to_another_host_the_listener_polls_at_its_interval_not_in_a_busy_loop(
    tmp_path: Path, azurite_connection_string: str,
) -> None:
    """Host A holds the timer lease; host B takes it (A's lease broken, as after a partition). A's renewal gets 409,
    sets ``_lost`` and A goes back to polling every ``listenerLockRecoveryPollingInterval`` (30 s here), as the host
    does. Before, ``_lost`` stayed set until the next successful acquire and the polling sleep woke at once on it:
    A polled storage in a tight loop (create container, upload, acquire: each a 409) as long as B held the lease."""
    fired: list[object] = []
    singleton = SingletonOptions(listener_lock_period=timedelta(seconds=15),
                                 listener_lock_recovery_polling_interval=timedelta(seconds=30))

    async def scenario() -> int:
        async with _listener(azurite_connection_string, _yearly(fired), Schedule.parse(YEARLY), tmp_path,
                             singleton) as (service, timer):
            attempts = 0
            acquire = timer._acquire

            async def counted() -> bool:
                nonlocal attempts
                attempts += 1
                return await acquire()

            timer._acquire = counted  # type: ignore[method-assign]
            timer.start()
            try:
                await _until(lambda: timer._lease is not None, 10, "host A to take the lease")
                blob = service.get_blob_client("azure-webjobs-hosts", timer._lock_blob)
                await BlobLeaseClient(blob).break_lease(lease_break_period=0)
                await BlobLeaseClient(blob, lease_id=str(uuid.uuid4())).acquire(lease_duration=60)  # host B
                await _until(timer._lost.is_set, 15, "host A to see its lease lost")  # at the 5 s renewal
                attempts = 0
                await asyncio.sleep(3)
                return attempts
            finally:
                await timer.stop()

    attempts = asyncio.run(scenario())
    assert attempts <= 1, f"{attempts} lease attempts in 3 s with a 30 s polling interval"


@pytest.mark.timeout(60)
@pytest.mark.parametrize("state", ["lease-lost", "stopping"])
def test_the_startup_run_is_not_fired_without_the_lease_or_during_shutdown(
    tmp_path: Path, azurite_connection_string: str, state: str,
) -> None:
    """The run at start (run_on_startup or past due) follows the status read. When that read outlasts the lease
    (storage slow: the SDK's retries take over a minute, the lease 15-60 s, the renewals fail with it and mark the
    lease lost), firing anyway would run without the lease, while another host may have taken it and fired the same
    past-due occurrence; and a shutdown that comes during the read would still start an invocation. The state the
    read returns into is set here directly: lease known lost (``_held_until`` 0, ``_lost`` set), or shutdown."""
    fired: list[object] = []

    async def scenario() -> None:
        async with _listener(azurite_connection_string, _yearly(fired, runOnStartup=True), Schedule.parse(YEARLY),
                             tmp_path) as (_, timer):
            if state == "lease-lost":
                timer._held_until = 0.0
                timer._lost.set()
            else:
                timer._held_until = asyncio.get_running_loop().time() + 3600
                timer._stopping.set()
            assert not timer._leading()
            await asyncio.wait_for(timer._fire_while_leader(), timeout=20)

    asyncio.run(scenario())
    assert fired == [], f"the timer fired at start while not leading ({state})"


@pytest.mark.timeout(150)
def test_shutdown_with_storage_unreachable_does_not_wait_out_the_sdk_retries_of_the_lease_release(
    tmp_path: Path,
) -> None:
    """Against unreachable storage one release lasts as long as the SDK's retries (over a minute): storage goes away
    (Azurite stopped, network gone), the user stops the dev host, and ``stop`` waited them out, past the host's 60 s
    shutdown timeout ("shutdown took longer than 60s; exiting without waiting", exit 1, the HTTP server and the
    invoker never shut down). The lease expires on its own: the release is given up after a few seconds."""
    fired: list[object] = []
    azurite = start_azurite()
    try:
        async def scenario() -> float:
            async with _listener(connection_string(azurite.port), _yearly(fired), Schedule.parse(YEARLY), tmp_path,
                                 SingletonOptions(listener_lock_period=timedelta(seconds=15))) as (_, timer):
                timer.start()
                await _until(lambda: timer._lease is not None, 15, "the lease")
                azurite.stop()
                loop = asyncio.get_running_loop()
                began = loop.time()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(timer.stop(), timeout=30)
                return loop.time() - began

        took = asyncio.run(scenario())
    finally:
        azurite.stop()
    assert took < 10, f"stop took {took:.0f}s (cut at 30 s) with storage unreachable"
