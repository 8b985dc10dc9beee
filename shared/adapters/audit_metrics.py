"""``sluice.audit.missing``: the zero-loss audit as an OpenTelemetry observable gauge, one point per partition.

The exporter (Prometheus scrape, OTLP or Azure Monitor, set up in shared/telemetry.py)
calls the callback on each collection; the audit itself (it reads the hub, the
checkpoints and ``window`` sequence numbers of the ledger per partition) runs every
``max_age`` seconds on a thread of its own (``RefreshedFigures``), never in the
collection, so a slow or unreachable dependency cannot hold the scrape of every
other instrument. The callback reports the last result while it is younger than
three runs; a failed audit reports nothing (no point is better than a false 0) and
is logged once per failed run.

The instrument is made once per meter provider: the SDK hands back the instrument
already made under a name and drops a new callback, so a gauge registered again
(``bootstrap.reset`` stopped the last one, the next ingest service registers a new
one) would keep reporting the stopped gauge's audits, then nothing. Its one callback
reports the gauge registered last.
"""

from __future__ import annotations

import logging
import threading
import weakref
from collections.abc import Iterable
from typing import Any

from opentelemetry import metrics

from shared.adapters.refreshed_figures import RefreshedFigures
from shared.exceptions import SluiceError
from shared.services.audit import AuditService
from shared.telemetry_names import BY_NAME, PARTITION

logger = logging.getLogger(__name__)

INSTRUMENT = BY_NAME["sluice.audit.missing"]


class AuditGauge:
    """The gauge's callback: per partition, the sequence numbers missing in the last ``window`` below its checkpoint."""

    def __init__(self, audit: AuditService, *, window: int, max_age: float) -> None:
        self._audit = audit
        self._window = window
        self._figures = RefreshedFigures(self._run, name="audit-gauge", period=max_age, failed=self._failed)

    def start(self) -> None:
        """Start auditing on the gauge's thread (when it is registered: the first collection finds a result)."""
        self._figures.start()

    def stop(self) -> None:
        """Stop auditing for good (the clients the audit reads with are being closed)."""
        self._figures.stop()

    def missing(self) -> dict[str, int]:
        """Partition -> missing count from the last audit (none yet, failed or too old: empty); never waits for one."""
        return self._figures.latest()

    def _run(self) -> dict[str, int]:
        report = self._audit.audit(window=self._window)
        return {p.partition: p.missing for p in report.partitions}

    @staticmethod
    def _failed(exc: BaseException) -> None:
        if isinstance(exc, SluiceError):
            logger.warning("audit for %s failed, no point reported: %s", INSTRUMENT.name, exc)
        else:
            logger.warning("audit for %s failed, no point reported", INSTRUMENT.name, exc_info=exc)

    def __call__(self, _options: Any) -> Iterable[metrics.Observation]:
        return [metrics.Observation(count, {PARTITION: partition}) for partition, count in self.missing().items()]


class _LatestGauge:
    """The instrument's one callback on a meter provider: the observations of the gauge registered last."""

    def __init__(self) -> None:
        self.gauge: AuditGauge | None = None

    def __call__(self, options: Any) -> Iterable[metrics.Observation]:
        gauge = self.gauge
        return [] if gauge is None else gauge(options)


# The one callback of each meter provider given, and of the global provider (before the SDK's is set, the API's
# proxy hands the instrument, callback and all, over to it when it is).
_by_provider: weakref.WeakKeyDictionary[metrics.MeterProvider, _LatestGauge] = weakref.WeakKeyDictionary()
_of_global: _LatestGauge | None = None
_lock = threading.Lock()


def _latest_of(meter_provider: metrics.MeterProvider | None) -> _LatestGauge:
    """The provider's callback, the instrument made with it the first time (under ``_lock``)."""
    global _of_global
    latest = _of_global if meter_provider is None else _by_provider.get(meter_provider)
    if latest is None:
        latest = _LatestGauge()
        meter = (meter_provider or metrics.get_meter_provider()).get_meter("sluice")
        meter.create_observable_gauge(INSTRUMENT.name, callbacks=[latest], unit=INSTRUMENT.unit,
                                      description=INSTRUMENT.description)
        if meter_provider is None:
            _of_global = latest
        else:
            _by_provider[meter_provider] = latest
    return latest


def register_audit_gauge(audit: AuditService, *, window: int, max_age: float,
                         meter_provider: metrics.MeterProvider | None = None) -> AuditGauge:
    """Export ``audit``'s results as ``sluice.audit.missing`` on the ``sluice`` meter (global provider unless given)
    and return the gauge, started; it replaces (and stops) the gauge registered before on that provider."""
    gauge = AuditGauge(audit, window=window, max_age=max_age)
    with _lock:
        latest = _latest_of(meter_provider)
        replaced, latest.gauge = latest.gauge, gauge
    if replaced is not None:
        replaced.stop()
    gauge.start()
    return gauge
