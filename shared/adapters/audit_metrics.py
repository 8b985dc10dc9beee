"""``sluice.audit.missing``: the zero-loss audit as an OpenTelemetry observable gauge, one point per partition.

The exporter (Prometheus scrape, OTLP or Azure Monitor, set up in shared/telemetry.py)
calls the callback on each collection; the audit itself runs at most once per
``max_age`` seconds (it reads the hub, the checkpoints and ``window`` sequence
numbers of the ledger per partition) and the last result is reported between
runs. A failed audit reports nothing for that collection (no point is better
than a false 0) and is logged at most once per ``max_age``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

from opentelemetry import metrics

from shared.exceptions import SluiceError
from shared.services.audit import AuditService
from shared.telemetry_names import BY_NAME, PARTITION

logger = logging.getLogger(__name__)

INSTRUMENT = BY_NAME["sluice.audit.missing"]


class AuditGauge:
    """The gauge's callback: per partition, the sequence numbers missing in the last ``window`` below its checkpoint."""

    def __init__(self, audit: AuditService, *, window: int, max_age: float,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        self._audit = audit
        self._window = window
        self._max_age = max_age
        self._monotonic = monotonic
        self._lock = threading.Lock()
        self._at: float | None = None
        self._missing: dict[str, int] = {}

    def missing(self) -> dict[str, int]:
        """Partition -> missing count, audited again when the last audit is older than ``max_age``."""
        with self._lock:
            now = self._monotonic()
            if self._at is None or now - self._at >= self._max_age:
                self._at = now
                try:
                    report = self._audit.audit(window=self._window)
                    self._missing = {p.partition: p.missing for p in report.partitions}
                except SluiceError as exc:
                    logger.warning("audit for %s failed, no point reported: %s", INSTRUMENT.name, exc)
                    self._missing = {}
            return dict(self._missing)

    def __call__(self, _options: Any) -> Iterable[metrics.Observation]:
        return [metrics.Observation(count, {PARTITION: partition}) for partition, count in self.missing().items()]


def register_audit_gauge(audit: AuditService, *, window: int, max_age: float,
                         meter_provider: metrics.MeterProvider | None = None) -> AuditGauge:
    """Create the observable gauge on the ``sluice`` meter (global provider unless given) and return its callback."""
    gauge = AuditGauge(audit, window=window, max_age=max_age)
    meter = (meter_provider or metrics.get_meter_provider()).get_meter("sluice")
    meter.create_observable_gauge(INSTRUMENT.name, callbacks=[gauge], unit=INSTRUMENT.unit,
                                  description=INSTRUMENT.description)
    return gauge
