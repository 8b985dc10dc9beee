"""The product's partition hash and the emulator's are two copies of one function: they must agree."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from emulators.eventhubs import partitioning as emulator
from sluice import partitioning as product


@given(st.text(max_size=64), st.integers(min_value=1, max_value=32))
def test_the_product_and_the_emulator_put_every_key_on_the_same_partition(key: str, count: int) -> None:
    assert product.hash_code(key) == emulator.hash_code(key)
    assert product.partition_for_key(key, count) == emulator.partition_for_key(key, count)


def test_known_values_of_the_service() -> None:
    assert product.partition_for_key("alphabet", 11) == 4
