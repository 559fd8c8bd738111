from __future__ import annotations

import numpy as np
import pytest

from device_sdk.bundle import ExitSpec
from device_sdk.errors import ConfigError
from device_sdk.policy import AlwaysExit, MaxProbExit, NeverExit, policy_from_spec, softmax


def test_softmax_is_stable_and_tempered() -> None:
    logits = np.array([[1000.0, 0.0, -1000.0], [1.0, 2.0, 3.0]])
    probs = softmax(logits)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-6)
    assert probs[0, 0] == pytest.approx(1.0)
    assert softmax(logits[1:], temperature=10.0).max() < probs[1].max()


def test_max_prob_exit_uses_the_threshold() -> None:
    probs = np.array([[0.9, 0.1], [0.6, 0.4], [0.5, 0.5]])
    np.testing.assert_array_equal(MaxProbExit(0.6).should_exit(probs), [True, True, False])
    np.testing.assert_array_equal(MaxProbExit(1.5).should_exit(probs), [False, False, False])
    assert NeverExit().should_exit(probs).sum() == 0
    assert AlwaysExit().should_exit(probs).all()


def test_policy_from_manifest_and_bad_settings() -> None:
    policy = policy_from_spec(ExitSpec(threshold=0.8))
    assert isinstance(policy, MaxProbExit) and policy.threshold == 0.8
    with pytest.raises(ConfigError):
        policy_from_spec(ExitSpec(threshold=0.8, score="astrology"))
    with pytest.raises(ConfigError):
        MaxProbExit(float("nan"))
