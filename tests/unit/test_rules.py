"""What makes an event critical: its severity, or any rule on its measurements."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from shared.domain.rules import Criticality, MeasurementRule, is_critical

names = st.sampled_from(["t", "h", "p"])
rules = st.lists(st.builds(MeasurementRule, measurement=names, op=st.sampled_from([">", ">=", "<", "<=", "==", "!="]),
                           value=st.sampled_from([-1.0, 0.0, 90.0])), max_size=4)
measurements = st.dictionaries(names, st.sampled_from([-1.0, 0.0, 89.9, 90.0, 90.1]), max_size=3)
severities = st.sampled_from(["info", "warning", "critical"])


@given(rules, measurements, severities)
def test_an_event_is_critical_by_severity_or_by_any_rule_it_matches(rules, measurements, severity):
    expected = severity == "critical" or any(rule.matches(measurements) for rule in rules)
    assert Criticality(rules)(severity, measurements) is expected
    assert is_critical(severity, measurements, rules) is expected


def test_a_rule_compares_the_named_measurement_and_never_matches_one_the_event_lacks():
    hot = MeasurementRule(measurement="temperature", op=">", value=90)
    check = Criticality([hot])
    assert check("info", {"temperature": 90.5}) and not check("info", {"temperature": 90.0})
    assert not check("info", {"humidity": 99.0}) and not check("info", {})
    assert check("critical", {}) and not Criticality([])("warning", {"temperature": 1e9})


@pytest.mark.parametrize(("fields", "refused"), [
    ({"value": float("nan")}, "value"),  # "> NaN" never holds, "!= NaN" always does
    ({"value": float("inf")}, "value"),
    ({"value": "-inf"}, "value"),
    ({"measurement": ""}, "measurement"),  # names no event can carry: the rule would never match
    ({"measurement": "t" * 65}, "measurement"),
    ({"measurement": "t\x00"}, "measurement"),
])
def test_a_rule_that_could_never_or_would_always_match_is_refused(fields, refused):
    with pytest.raises(ValidationError) as caught:
        MeasurementRule.model_validate({"measurement": "t", "op": ">", "value": 1.0, **fields})
    assert [error["loc"] for error in caught.value.errors()] == [(refused,)]


def test_a_rule_at_the_bounds_of_a_name_and_a_number_is_taken():
    assert MeasurementRule(measurement="t" * 64, op="!=", value=-1e308).matches({"t" * 64: 0.0})
