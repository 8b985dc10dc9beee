"""KEDA's arithmetic: the replica count from a lag, and a partition's lag from its checkpoint."""

from __future__ import annotations

import pytest

from shared.adapters.eventhub_lag import MAX_INT64, unprocessed_events, unprocessed_without_checkpoint
from shared.services.scaling import ScalingRule, desired_replicas, scaler_metric


def test_replicas_are_the_lag_over_the_threshold_rounded_up_and_clamped() -> None:
    rule = ScalingRule(threshold=1000, activation=0, min_replicas=0, max_replicas=8)
    assert desired_replicas(0, 32, rule) == 0
    assert desired_replicas(1, 32, rule) == 1
    assert desired_replicas(1000, 32, rule) == 1
    assert desired_replicas(1001, 32, rule) == 2
    assert desired_replicas(10**9, 32, rule) == 8


def test_the_scaler_never_asks_for_more_replicas_than_partitions() -> None:
    assert scaler_metric(10**6, 4, 1000) == 4000
    assert desired_replicas(10**6, 4, ScalingRule(threshold=1000, max_replicas=32)) == 4


def test_activation_keeps_zero_until_the_lag_is_strictly_above_it() -> None:
    rule = ScalingRule(threshold=1000, activation=50)
    assert desired_replicas(50, 8, rule) == 0
    assert desired_replicas(51, 8, rule) == 1
    # A floor above zero is kept whatever the lag.
    assert desired_replicas(0, 8, ScalingRule(threshold=1000, activation=50, min_replicas=2, max_replicas=8)) == 2


@pytest.mark.parametrize(("kwargs", "named"), [
    ({"threshold": 0}, "unprocessedEventThreshold"),
    ({"threshold": 10, "activation": -1}, "activationUnprocessedEventThreshold"),
    ({"threshold": 10, "min_replicas": 5, "max_replicas": 2}, "minReplicaCount"),
])
def test_a_rule_that_cannot_scale_is_refused_by_name(kwargs: dict[str, int], named: str) -> None:
    with pytest.raises(ValueError, match=named):
        ScalingRule(**kwargs)


def test_partition_lag_as_keda_counts_it() -> None:
    assert unprocessed_events(29, 9) == 20
    assert unprocessed_events(5, 5) == 0
    # Behind the checkpoint: a wrapped sequence is counted round the end ...
    assert unprocessed_events(10, MAX_INT64 - 15) == 25
    # ... and properties older than the checkpoint (a huge count) are read as stale: 0.
    assert unprocessed_events(10, 11) == 0
    assert unprocessed_without_checkpoint(0, 29) == 30
    assert unprocessed_without_checkpoint(0, 0) == 1
    assert unprocessed_without_checkpoint(7, 7) == 0
