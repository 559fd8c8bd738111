"""The class-list rule: a model version may only append classes to the one it replaces."""

from __future__ import annotations

import pytest

from edgecascade.device_sdk.errors import BundleError, ClassListError
from edgecascade.device_sdk.model.bundle import check_classes_grow

OLD = ("cat", "dog", "bird")


def test_the_same_list_or_one_with_classes_appended_is_allowed() -> None:
    assert check_classes_grow(OLD, OLD) == ()
    assert check_classes_grow(OLD, [*OLD, "fox", "owl"]) == ("fox", "owl")


@pytest.mark.parametrize(
    "new",
    [("cat", "dog"), ("cat", "dog", "crow"), ("dog", "cat", "bird"), ("cat", "dog", "bird", "cat"), ()],
    ids=["shrunk", "renamed", "reordered", "repeated", "empty"],
)
def test_any_other_list_is_a_class_list_error(new: tuple[str, ...]) -> None:
    with pytest.raises(ClassListError) as info:
        check_classes_grow(OLD, new)
    assert isinstance(info.value, BundleError) and str(list(new)) in str(info.value)
