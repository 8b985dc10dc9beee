"""Timer trigger: enrich every closed (and every late-updated) event-time window into PostgreSQL.

Runs on ``SLUICE_ENRICH_SCHEDULE`` (NCRONTAB, six fields). The service does the
work and keeps its own position (the watermark, in PostgreSQL, moved in the same
transaction as each window's rows), so a failed or missed run is simply resumed
by the next one; ``use_monitor`` lets the host run a missed schedule after a
restart. A ``TransientError`` is logged and re-raised so the host records the
failure; nothing is lost, because the watermark did not pass the failed window.
"""

from __future__ import annotations

import logging

import azure.functions as func

from shared import bootstrap, telemetry

logger = logging.getLogger(__name__)

bp = func.Blueprint()


@bp.function_name("enrichment")
@bp.timer_trigger(arg_name="timer", schedule="%SLUICE_ENRICH_SCHEDULE%", run_on_startup=False, use_monitor=True)
def enrichment(timer: func.TimerRequest, context: func.Context) -> None:
    if timer.past_due:
        logger.warning("enrichment timer is past due; catching up")
    service = bootstrap.enrichment_service()  # first: it configures telemetry on a cold start
    parent, parent_state = telemetry.host_trace(context)  # the host's invocation is the run's parent
    with telemetry.stage_span("enrich", parent=parent, parent_state=parent_state):
        result = service.run()
    watermark = result.watermark.isoformat() if result.watermark else None
    logger.info(
        "enrichment windows=%d late_windows=%d events=%d watermark=%s more_pending=%s",
        len(result.windows), result.late_windows, result.events, watermark, result.more_pending,
        extra={"sluice.windows": len(result.windows), "sluice.late_windows": result.late_windows,
               "sluice.events": result.events, "sluice.watermark": watermark,
               "sluice.more_pending": result.more_pending},
    )
