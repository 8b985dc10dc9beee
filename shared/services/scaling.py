"""What KEDA and the HPA make of a lag reading: the replica count of the ingest Deployment.

The ``azure-eventhub`` scaler reports an external metric of target type
AverageValue equal to ``unprocessedEventThreshold``; the metric is the total lag,
but never more than ``partitions * threshold`` (so the scaler alone never asks for
more replicas than partitions). The HPA then asks for ``ceil(metric / threshold)``
replicas, clamped to ``[minReplicaCount, maxReplicaCount]``. From zero, KEDA
activates the Deployment only when the lag is strictly above
``activationUnprocessedEventThreshold``, and returns it to zero when it is not.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class ScalingRule:
    """The ScaledObject's numbers that decide the replica count."""

    threshold: int
    activation: int = 0
    min_replicas: int = 0
    max_replicas: int = 100

    def __post_init__(self) -> None:
        if self.threshold <= 0:
            raise ValueError(f"unprocessedEventThreshold must be a positive number, got {self.threshold}")
        if self.activation < 0:
            raise ValueError(f"activationUnprocessedEventThreshold must not be negative, got {self.activation}")
        if not 0 <= self.min_replicas <= self.max_replicas:
            raise ValueError(f"minReplicaCount {self.min_replicas} must be between 0 and maxReplicaCount "
                             f"{self.max_replicas}")


def scaler_metric(total_lag: int, partitions: int, threshold: int) -> int:
    """The scaler's metric: the lag, capped at ``partitions * threshold``."""
    if total_lag // threshold > partitions:
        return partitions * threshold
    return total_lag


def desired_replicas(total_lag: int, partitions: int, rule: ScalingRule) -> int:
    """The replicas KEDA and the HPA settle on for ``total_lag`` unprocessed events."""
    active = total_lag > rule.activation
    if not active and rule.min_replicas == 0:
        return 0
    wanted = math.ceil(scaler_metric(total_lag, partitions, rule.threshold) / rule.threshold)
    return max(rule.min_replicas, 1 if active else 0, min(rule.max_replicas, wanted))
