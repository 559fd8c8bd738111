"""The cut-point cost model on hand-made profiles whose best cut is known by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from edgecascade.device_sdk.errors import ConfigError
from edgecascade.device_sdk.wire.codec import encoded_size
from edgecascade.tools.cut_cost import (
    CutPoint,
    Deployment,
    ExitPoint,
    Profile,
    cut_bytes,
    envelope_overhead,
    pair_cost,
    plan_cuts,
    resolve_encodings,
    survival_shares,
)
from tests.imports import heavy_imports

UNIT = Deployment(
    device_factor=1.0,
    gateway_factor=1.0,
    cloud_factor=1.0,
    uplink_mbps=8.0,  # 1 byte per microsecond: bytes / 1000 = ms
    uplink_ms=0.0,
    backhaul_mbps=8.0,
    backhaul_ms=0.0,
)


def _point(name: str, ms: float, size: int, binarised: bool = False, current: str | None = None) -> CutPoint:
    sizes = {"float32": 4 * size, "int8": size} | ({"1bit": size // 8} if binarised else {})
    return CutPoint(name, "device", (size,), ms, sizes, binarised, current)


def _profile(
    *points: CutPoint,
    head_ms: float = 1.0,
    exits: tuple[ExitPoint, ...] = (),
    survival: tuple[float, ...] = (1.0,),
) -> Profile:
    return Profile(tuple(points), head_ms, exits, tuple(survival))


def test_slow_links_cut_after_the_smallest_tensor() -> None:
    profile = _profile(_point("big", 1.0, 10_000), _point("small", 1.0, 100), _point("medium", 1.0, 5_000))
    slow = Deployment(1.0, 1.0, 1.0, uplink_mbps=0.1, uplink_ms=0.0, backhaul_mbps=0.1, backhaul_ms=0.0)
    plan = plan_cuts(profile, slow)
    assert (plan.best.cut1, plan.best.cut2) == ("small", "small")
    # compute is 4 ms wherever it runs (all factors 1); 100 bytes at 100 bit/ms is 8 ms per link
    assert plan.best.expected_ms == pytest.approx(4.0 + 8.0 + 8.0)


def test_fast_link_and_slow_device_cut_as_early_as_possible() -> None:
    profile = _profile(_point("first", 1.0, 2_000), _point("second", 5.0, 100), _point("third", 5.0, 100))
    deployment = Deployment(100.0, 1.0, 0.1, uplink_mbps=1000.0, uplink_ms=0.0, backhaul_mbps=1000.0)
    plan = plan_cuts(profile, deployment)
    assert plan.best.cut1 == "first"
    assert plan.best.device_ms == pytest.approx(100.0)


def test_fast_device_and_slow_link_keep_everything_an_exit_answers_on_the_device() -> None:
    exits = (ExitPoint("exit1", 1, 0.5, 0.9),)
    profile = _profile(
        _point("a", 1.0, 1_000),
        _point("b", 1.0, 1_000),
        _point("c", 1.0, 10),
        exits=exits,
        survival=(1.0, 0.2),
    )
    plan = plan_cuts(profile, Deployment(1.0, 1.0, 1.0, uplink_mbps=0.01, uplink_ms=50.0))
    assert plan.best.cut1 == "c"  # the exit at b runs on the device, and c is the smallest tensor after it
    assert plan.best.to_gateway == pytest.approx(0.2)


def test_pair_cost_matches_the_formula_worked_by_hand() -> None:
    exits = (ExitPoint("e1", 0, 0.5, 0.8), ExitPoint("e2", 2, 0.5, 0.8))
    profile = _profile(
        _point("a", 2.0, 1_000),
        _point("b", 3.0, 2_000),
        _point("c", 4.0, 500),
        head_ms=5.0,
        exits=exits,
        survival=(1.0, 0.4, 0.1),
    )
    deployment = Deployment(
        2.0, 1.0, 0.5, uplink_mbps=8.0, uplink_ms=1.0, backhaul_mbps=8.0, backhaul_ms=10.0
    )
    encodings = resolve_encodings(profile.points)

    ab = pair_cost(profile, deployment, encodings, 0, 1)  # e1 on the device, e2 in the cloud
    assert (ab.device_ms, ab.gateway_ms, ab.cloud_ms) == pytest.approx((5.0, 3.0, 4.75))
    assert (ab.to_gateway, ab.to_cloud) == pytest.approx((0.4, 0.4))
    assert (ab.uplink_bytes, ab.backhaul_bytes) == pytest.approx((400.0, 800.0))
    assert ab.expected_ms == pytest.approx(5.0 + 0.4 * (1 + 1 + 3) + 0.4 * (2 + 10 + 4.75))

    ac = pair_cost(profile, deployment, encodings, 0, 2)  # e2 now on the gateway
    assert (ac.gateway_ms, ac.cloud_ms, ac.to_cloud) == pytest.approx((7.5, 2.5, 0.1))
    assert ac.expected_ms == pytest.approx(5.0 + 0.4 * (1 + 1 + 7.5) + 0.1 * (0.5 + 10 + 2.5))
    assert plan_cuts(profile, deployment).best.expected_ms <= ac.expected_ms


def test_plan_covers_every_ordered_pair_and_finds_todays() -> None:
    points = [
        _point("a", 1.0, 10),
        _point("b", 1.0, 10, current="cut1"),
        _point("c", 1.0, 10, current="cut2"),
    ]
    plan = plan_cuts(_profile(*points), UNIT)
    assert [(p.cut1, p.cut2) for p in plan.pairs] == [
        ("a", "a"),
        ("a", "b"),
        ("a", "c"),
        ("b", "b"),
        ("b", "c"),
        ("c", "c"),
    ]
    assert plan.current is not None and (plan.current.cut1, plan.current.cut2) == ("b", "c")
    assert plan.best.expected_ms == min(p.expected_ms for p in plan.pairs)


def test_ties_go_to_fewer_bytes() -> None:
    profile = _profile(_point("a", 0.0, 1_000), _point("b", 0.0, 10))
    free_links = Deployment(
        1.0, 1.0, 1.0, uplink_mbps=1e12, uplink_ms=0.0, backhaul_mbps=1e12, backhaul_ms=0.0
    )
    assert (plan_cuts(profile, free_links).best.cut1, plan_cuts(profile, free_links).best.cut2) == ("b", "b")


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("uplink_mbps", 0.0),
        ("backhaul_mbps", -5.0),
        ("uplink_ms", -1.0),
        ("backhaul_ms", math.nan),
        ("device_factor", -8.0),
        ("gateway_factor", 0.0),
        ("cloud_factor", math.inf),
    ],
)
def test_impossible_deployments_are_refused(field: str, value: float) -> None:
    with pytest.raises(ConfigError, match=field.replace("_", "-")):
        Deployment(**{field: value})


def test_every_impossible_argument_is_named_at_once() -> None:
    with pytest.raises(ConfigError) as info:
        Deployment(uplink_mbps=0.0, backhaul_ms=-1.0, device_factor=-2.0)
    assert len(info.value.problems) == 3


def test_default_encoding_is_1bit_where_binarised_else_int8() -> None:
    points = [_point("plain", 1.0, 64), _point("signs", 1.0, 64, binarised=True)]
    assert resolve_encodings(points) == {"plain": "int8", "signs": "1bit"}
    assert resolve_encodings(points, "float32") == {"plain": "float32", "signs": "float32"}
    assert resolve_encodings(points, "1bit") == {"plain": "int8", "signs": "1bit"}
    assert resolve_encodings(points, "float32", {"signs": "int8"}) == {"plain": "float32", "signs": "int8"}


@pytest.mark.parametrize(
    ("everywhere", "per_cut", "message"),
    [
        (None, {"plain": "1bit"}, "not all ±1"),
        (None, {"nowhere": "int8"}, "unknown cut 'nowhere'"),
        ("int4", {}, "unknown encoding 'int4'"),
        (None, {"plain": "bf16"}, "unknown encoding 'bf16'"),
    ],
)
def test_impossible_encodings_are_refused(
    everywhere: str | None, per_cut: dict[str, str], message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        resolve_encodings([_point("plain", 1.0, 64)], everywhere, per_cut)


def test_survival_follows_the_cascade() -> None:
    conf1 = np.array([0.9, 0.5, 0.95, 0.2])
    conf2 = np.array([0.1, 0.9, 0.1, 0.3])  # the first and third never get here
    assert survival_shares([conf1, conf2], [0.8, 0.8]) == pytest.approx((1.0, 0.5, 0.25))
    assert survival_shares([], []) == (1.0,)


def test_cut_bytes_are_the_encoded_tensor_plus_the_envelope() -> None:
    overhead = envelope_overhead("cam-01")
    assert overhead == 38 + len("cam-01")  # as edgecascade.device_sdk.wire documents the header
    sizes = cut_bytes((7, 7, 16), binarised=False, overhead=overhead)
    assert sizes == {e: encoded_size(e, (7, 7, 16)) + overhead for e in ("float32", "float16", "int8")}
    assert cut_bytes((7, 7, 16), binarised=True, overhead=0)["1bit"] == encoded_size("1bit", (7, 7, 16))


def test_profile_refuses_inconsistent_exit_rates() -> None:
    with pytest.raises(ValueError, match="survival"):
        _profile(_point("a", 1.0, 10), exits=(ExitPoint("e", 0, 1.0, 0.5),), survival=(1.0,))
    with pytest.raises(ValueError, match="trunk order"):
        _profile(_point("a", 1.0, 10), exits=(ExitPoint("e", 3, 1.0, 0.5),), survival=(1.0, 0.5))


def test_the_cost_model_does_not_import_tensorflow() -> None:
    assert heavy_imports("edgecascade.tools.cut_cost", "edgecascade.tools.planner") == []
