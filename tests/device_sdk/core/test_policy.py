from __future__ import annotations

import numpy as np
import pytest

from edgecascade.device_sdk.core.policy import (
    AlwaysExit,
    MaxProbExit,
    NeverExit,
    ThresholdExit,
    entropy_confidence,
    margin,
    max_prob,
    policy_from_spec,
    softmax,
)
from edgecascade.device_sdk.errors import ConfigError
from edgecascade.device_sdk.model.bundle import ExitSpec


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
    assert isinstance(policy, ThresholdExit) and policy.threshold == 0.8 and policy.score == "max_prob"
    assert policy_from_spec(ExitSpec(threshold=0.3, score="margin")).score == "margin"
    with pytest.raises(ConfigError):
        policy_from_spec(ExitSpec(threshold=0.8, score="astrology"))
    with pytest.raises(ConfigError):
        MaxProbExit(float("nan"))


def test_scores_rank_confident_answers_higher() -> None:
    probs = np.array([[1.0, 0.0, 0.0], [0.6, 0.3, 0.1], [0.45, 0.45, 0.1], [1 / 3, 1 / 3, 1 / 3]])
    np.testing.assert_allclose(max_prob(probs), [1.0, 0.6, 0.45, 1 / 3], rtol=1e-6)
    np.testing.assert_allclose(margin(probs), [1.0, 0.3, 0.0, 0.0], atol=1e-6)
    entropy = entropy_confidence(probs)
    assert entropy[0] == pytest.approx(1.0) and entropy[3] == pytest.approx(0.0, abs=1e-6)
    assert entropy[0] > entropy[1] > entropy[2] > entropy[3]


def test_margin_policy_separates_what_max_prob_cannot() -> None:
    probs = np.array([[0.5, 0.5, 0.0], [0.5, 0.1, 0.4], [0.5, 0.05, 0.05]])  # same top probability
    assert MaxProbExit(0.5).should_exit(probs).all()
    np.testing.assert_array_equal(ThresholdExit(0.3, "margin").should_exit(probs), [False, False, True])
