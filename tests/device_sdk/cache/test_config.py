"""CacheConfig: every problem listed at once, the index choices."""

from __future__ import annotations

import pytest

from edgecascade.device_sdk.cache import CacheConfig
from edgecascade.device_sdk.errors import ConfigError


def test_config_validation_lists_every_problem() -> None:
    with pytest.raises(ConfigError) as info:
        CacheConfig(capacity=0, tau=float("nan"), k=2, min_votes=3, index="faiss")  # type: ignore[arg-type]
    assert len(info.value.problems) == 4
    assert any("auto, exact, hnsw" in p for p in info.value.problems)


@pytest.mark.parametrize("index", ["auto", "exact", "hnsw"])
def test_each_index_choice_is_accepted(index: str) -> None:
    assert CacheConfig(index=index).index == index  # type: ignore[arg-type]


def test_the_default_chooses_the_index_by_capacity() -> None:
    assert CacheConfig().index == "auto"
