"""``event.metadata`` of the dev host: a dict whose values are computed only when read."""

from __future__ import annotations

import json
from typing import Any

import pytest
from azure.functions import meta

from devhost.eventhub_trigger import LazyMetadata


class _Datum(meta.Datum):
    def __init__(self, value: Any, reads: list[Any]) -> None:
        super().__init__(None, "json")
        self._v = value
        self._reads = reads

    @property
    def python_value(self) -> Any:
        if isinstance(self._v, Exception):
            raise self._v
        self._reads.append(self._v)
        return self._v


def test_reading_one_key_computes_only_that_value_and_only_once() -> None:
    reads: list[Any] = []
    metadata = LazyMetadata({"PartitionContext": _Datum({"PartitionId": "3"}, reads),
                             "SystemPropertiesArray": _Datum(RuntimeError("computed without being read"), reads)})
    assert metadata["PartitionContext"] == {"PartitionId": "3"}
    assert metadata.get("PartitionContext") == {"PartitionId": "3"}
    assert reads == [{"PartitionId": "3"}]
    with pytest.raises(RuntimeError):
        metadata["SystemPropertiesArray"]


def test_it_behaves_as_the_dict_the_worker_gives() -> None:
    reads: list[Any] = []
    metadata = LazyMetadata({"a": _Datum(1, reads), "b": _Datum([2], reads)})
    plain = {"a": 1, "b": [2]}
    assert isinstance(metadata, dict)
    assert metadata == plain
    assert dict(metadata) == plain
    assert {**metadata} == plain
    assert json.loads(json.dumps(metadata)) == plain
    assert json.loads(json.dumps(metadata, sort_keys=True, indent=1)) == plain
    assert list(metadata.items()) == [("a", 1), ("b", [2])]
    assert metadata.get("missing", 5) == 5
    assert reads == [1, [2]]
