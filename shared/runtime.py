"""Settings of the worker process itself, applied by an explicit call when the worker starts.

``shared.bootstrap.start_worker`` calls :func:`configure` before the first
service of the process is built; reading the settings changes nothing.

The garbage collector: CPython collects its youngest generation every 700 net
allocations of container objects. Ingest keeps about 30 of them per event (the
validated event, its values, a bound statement per table) until the batch is
planned and sent, so with the default a batch of 256 events is walked ten times
over, and its objects are promoted to older generations they never live to
need, where full collections walk them again with the whole heap. With the
threshold above one batch's working set (``maxEventBatchSize`` times 30), the
objects of a batch are freed by reference counting before a collection walks
them. Reference cycles are still collected, only later: at most that many young
objects wait for it.
"""

from __future__ import annotations

import gc
import logging

from shared.settings import WorkerSettings

logger = logging.getLogger(__name__)


def configure(settings: WorkerSettings) -> None:
    """Apply the worker settings to this process (idempotent)."""
    young, middle, oldest = gc.get_threshold()
    if young != settings.gc_young_threshold:
        gc.set_threshold(settings.gc_young_threshold, middle, oldest)
        logger.info("garbage collector: young generation collected every %d allocations", settings.gc_young_threshold)
