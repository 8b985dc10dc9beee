"""Timer trigger: copy the event store's changes into Redis (``SLUICE_CHANGEFEED_SCHEDULE``, NCRONTAB).

Calls the change feed service once per tick. A ``DependencyUnavailable``
(Cassandra or Redis down) propagates, so the invocation is reported as failed;
the saved position was not moved past anything unwritten, and the next tick
resumes from it. The schedule monitor is left to the host's default, which is off
for schedules shorter than a minute: a missed tick needs no catch-up run, since
the next tick resumes from the saved position anyway, and the monitor would cost
a status blob write per tick (17,280 a day at the 5 s default). The host's timer
singleton can still lapse, which the service tolerates (compare-and-set position,
idempotent writes).
"""

from __future__ import annotations

import logging

import azure.functions as func

from shared import bootstrap, telemetry

logger = logging.getLogger(__name__)

bp = func.Blueprint()


@bp.function_name("changefeed")
@bp.timer_trigger(arg_name="timer", schedule="%SLUICE_CHANGEFEED_SCHEDULE%", run_on_startup=False)
def changefeed(timer: func.TimerRequest, context: func.Context) -> None:
    if timer.past_due:
        logger.info("change feed timer is past due; running now")
    service = bootstrap.changefeed_service()  # first: it configures telemetry on a cold start
    parent, parent_state = telemetry.host_trace(context)  # the host's invocation is the run's parent
    with telemetry.stage_span("changefeed", parent=parent, parent_state=parent_state):
        result = service.run()
    logger.info("change feed run: pages=%d events=%d critical=%d stopped=%s",
                result.pages, result.events, result.critical, result.stopped,
                extra={"sluice.pages": result.pages, "sluice.events": result.events, "sluice.critical": result.critical,
                       "sluice.stopped": result.stopped})
