"""The worker's own settings take effect when the worker starts (explicitly), not when settings are read."""

from __future__ import annotations

import gc
import json
from pathlib import Path

import pytest

from shared import bootstrap, runtime
from shared.exceptions import ConfigurationError
from shared.settings import WorkerSettings, load_settings

SAMPLE = json.loads((Path(__file__).resolve().parents[2] / "local.settings.sample.json").read_text())["Values"]


@pytest.fixture
def collector():
    before = gc.get_threshold()
    yield
    gc.set_threshold(*before)


def test_starting_the_worker_sets_the_young_generation_threshold_and_reading_settings_does_not(collector,
                                                                                                  monkeypatch):
    gc.set_threshold(700, 10, 10)
    for name, value in SAMPLE.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("SLUICE_WORKER_GC_YOUNG_THRESHOLD", "12345")
    bootstrap.reset()
    try:
        assert bootstrap.settings().worker.gc_young_threshold == 12345
        assert gc.get_threshold() == (700, 10, 10)  # no side effect of reading settings
        bootstrap.dead_letter_sink()  # the first service built starts the worker
        assert gc.get_threshold() == (12345, 10, 10)  # the older generations keep their thresholds
    finally:
        bootstrap.reset()


def test_the_default_covers_a_batch_of_a_thousand_events(collector):
    runtime.configure(WorkerSettings())
    assert gc.get_threshold()[0] == 50_000


def test_zero_which_would_switch_the_collector_off_is_refused_by_name():
    with pytest.raises(ConfigurationError, match="SLUICE_WORKER_GC_YOUNG_THRESHOLD"):
        load_settings(dict(SAMPLE, SLUICE_WORKER_GC_YOUNG_THRESHOLD="0"))
