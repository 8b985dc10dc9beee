"""What makes an event critical.

An event is critical when its ``severity`` is ``critical`` or when any configured
rule on its measurements holds, for example ``temperature > 90``. Rules come
from settings as JSON (``SLUICE_CRITICAL_RULES``), e.g.
``[{"measurement": "temperature", "op": ">", "value": 90}]``; a measurement the
event does not carry never matches.
"""

from __future__ import annotations

import dataclasses
import operator
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, ConfigDict

from shared.domain.events import MeasurementName

if TYPE_CHECKING:
    from shared.domain.stored import StoredEvent

_OPS: dict[str, Callable[[float, float], bool]] = {
    ">": operator.gt,
    ">=": operator.ge,
    "<": operator.lt,
    "<=": operator.le,
    "==": operator.eq,
    "!=": operator.ne,
}


class MeasurementRule(BaseModel):
    """``measurement op value``: one threshold on one measurement.

    ``measurement`` is a name an event can carry (as the contract's measurement names: 1-64 characters, no NUL),
    ``value`` a finite number: ``> NaN`` never holds and ``!= NaN`` always does, so a rule that could never, or
    would always, match is refused with the settings instead.
    """

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    measurement: MeasurementName
    op: Literal[">", ">=", "<", "<=", "==", "!="]
    value: float

    def matches(self, measurements: Mapping[str, float]) -> bool:
        observed = measurements.get(self.measurement)
        return observed is not None and _OPS[self.op](observed, self.value)

    def __str__(self) -> str:
        return f"{self.measurement} {self.op} {self.value:g}"


def is_critical(severity: str, measurements: Mapping[str, float], rules: Sequence[MeasurementRule]) -> bool:
    """True when the severity says so or any rule matches."""
    return Criticality(rules)(severity, measurements)


class Criticality:
    """:func:`is_critical` for one set of rules, looked up once: ingest asks it of every event."""

    def __init__(self, rules: Sequence[MeasurementRule]) -> None:
        self._checks = tuple((rule.measurement, _OPS[rule.op], rule.value) for rule in rules)

    def __call__(self, severity: str, measurements: Mapping[str, float]) -> bool:
        if severity == "critical":
            return True
        for name, holds, threshold in self._checks:
            observed = measurements.get(name)
            if observed is not None and holds(observed, threshold):
                return True
        return False

    def decided(self, event: StoredEvent) -> StoredEvent:
        """``event`` with ``critical`` decided: a row written without the flag (``None``, before the flag existed)
        gets these rules, instead of its document saying ``false``; a row with the flag costs one test."""
        if event.critical is not None:
            return event
        return dataclasses.replace(event, critical=self(event.severity, event.measurements))

    def all_decided(self, events: Sequence[StoredEvent]) -> list[StoredEvent]:
        """Each of ``events`` :meth:`decided` (the test inlined: a page of the change feed is thousands of rows)."""
        decided = self.decided
        return [event if event.critical is not None else decided(event) for event in events]
