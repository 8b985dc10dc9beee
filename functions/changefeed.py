"""Timer trigger: copy the event store's changes into Redis (``SLUICE_CHANGEFEED_SCHEDULE``, NCRONTAB).

Calls the change feed service once per tick. A ``DependencyUnavailable``
(Cassandra or Redis down) propagates, so the invocation is reported as failed;
the saved position was not moved past anything unwritten, and the next tick
resumes from it. ``use_monitor`` lets the host catch up a missed tick after a
restart; the host's timer singleton can still lapse, which the service tolerates
(compare-and-set position, idempotent writes).
"""

from __future__ import annotations

import logging

import azure.functions as func

from shared import bootstrap, telemetry

logger = logging.getLogger(__name__)

bp = func.Blueprint()


@bp.function_name("changefeed")
@bp.timer_trigger(arg_name="timer", schedule="%SLUICE_CHANGEFEED_SCHEDULE%", run_on_startup=False, use_monitor=True)
def changefeed(timer: func.TimerRequest) -> None:
    if timer.past_due:
        logger.info("change feed timer is past due; running now")
    service = bootstrap.changefeed_service()  # first: it configures telemetry on a cold start
    with telemetry.stage_span("changefeed"):
        result = service.run()
    logger.info("change feed run: pages=%d events=%d critical=%d stopped=%s",
                result.pages, result.events, result.critical, result.stopped,
                extra={"sluice.pages": result.pages, "sluice.events": result.events, "sluice.critical": result.critical,
                       "sluice.stopped": result.stopped})
