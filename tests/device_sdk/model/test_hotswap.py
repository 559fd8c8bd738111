"""ServedModels: the current model, and the replaced one only for its grace period."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from edgecascade.device_sdk.model.hotswap import ServedModels


@dataclass(frozen=True)
class Model:
    version: int
    tag: str = ""


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_swap_keeps_the_replaced_version_for_its_grace_only() -> None:
    clock = Clock()
    models = ServedModels(Model(1), grace=30, clock=clock)
    old = models.current
    assert models.swap(Model(2)) is old
    assert models.current == Model(2)
    assert models.get(1) is old and models.get(2) == Model(2)
    assert models.previous() is old and models.versions() == (2, 1)
    clock.now += 29.9
    assert models.get(1) is old
    clock.now += 0.2
    assert models.get(1) is None and models.previous() is None and models.versions() == (2,)
    assert models.get(3) is None


def test_swapping_back_serves_the_new_object_and_zero_grace_retires_at_once() -> None:
    clock = Clock()
    models = ServedModels(Model(2, "v2"), grace=10, clock=clock)
    models.swap(Model(1, "rollback"))
    assert models.get(2) == Model(2, "v2")
    models.swap(Model(2, "again"))  # v2 again: never the retired v2 object
    assert models.get(2) == Model(2, "again") and models.get(1) == Model(1, "rollback")
    assert models.versions() == (2, 1)
    strict = ServedModels(Model(1), grace=0, clock=clock)
    strict.swap(Model(2))
    assert strict.get(1) is None and strict.previous() is None
    with pytest.raises(ValueError):
        ServedModels(Model(1), grace=-1)
