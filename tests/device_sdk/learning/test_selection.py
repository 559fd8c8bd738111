"""Hard-example selection: each filter on hand-made answers, the selector, and its config section."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edgecascade.device_sdk.device_config import load_device_config
from edgecascade.device_sdk.errors import ConfigError
from edgecascade.device_sdk.learning.selection import (
    Answers,
    AuditSample,
    Degraded,
    ExitsDisagree,
    HardExampleSelector,
    LowConfidence,
    ReachedCloud,
)
from edgecascade.device_sdk.learning.settings import HardExampleSettings


def _answers() -> Answers:
    """Four inputs: confident device answer; gateway overruling exit 1; unsure cloud; degraded."""
    exit_probs = np.array(
        [[0.9, 0.05, 0.05], [0.6, 0.3, 0.1], [0.4, 0.35, 0.25], [0.5, 0.45, 0.05]], np.float32
    )
    final_probs = np.array(
        [[0.9, 0.05, 0.05], [0.1, 0.85, 0.05], [0.48, 0.47, 0.05], [0.5, 0.45, 0.05]], np.float32
    )
    return Answers(
        exit_probs, final_probs, ["device", "gateway", "cloud", "device"], np.array([0, 0, 0, 1], bool)
    )


def test_each_filter_marks_its_inputs() -> None:
    answers = _answers()
    assert ReachedCloud().select(answers).tolist() == [False, False, True, False]
    assert ExitsDisagree().select(answers).tolist() == [False, True, False, False]
    assert Degraded().select(answers).tolist() == [False, False, False, True]
    # margins of the final answers: 0.85, 0.75, 0.01, 0.05
    assert LowConfidence(0.1, "margin").select(answers).tolist() == [False, False, True, True]
    assert LowConfidence(0.02, "margin").select(answers).tolist() == [False, False, True, False]
    # normalised-entropy confidence: only the near-one-hot answers are confident
    entropy = LowConfidence(0.5, "entropy").select(answers)
    assert entropy.tolist() == [False, False, True, True]


def test_selector_gives_every_reason_and_nothing_for_easy_inputs() -> None:
    reasons = HardExampleSelector.default().reasons(_answers())
    assert reasons == [(), ("exits_disagree",), ("reached_cloud", "low_margin"), ("low_margin", "degraded")]
    only_degraded = HardExampleSelector([Degraded()]).reasons(_answers())
    assert only_degraded == [(), (), (), ("degraded",)]


def test_selector_from_settings_uses_only_the_named_filters() -> None:
    settings = HardExampleSettings(filters=("reached_cloud", "low_margin"), low_threshold=0.02)
    selector = HardExampleSelector.from_settings(settings)
    assert [f.reason for f in selector.filters] == ["reached_cloud", "low_margin"]
    assert selector.reasons(_answers()) == [(), (), ("reached_cloud", "low_margin"), ()]


def test_config_section_from_toml_and_environment(tmp_path: Path) -> None:
    path = tmp_path / "device.toml"
    path.write_text('[hard_examples]\nfilters = ["degraded"]\nlow_threshold = 0.3\noutbox = "hx.db"\n')
    config = load_device_config(path, env={"EC_HARD_EXAMPLES__KEEP_RAW": "yes"})
    assert config.hard_examples.filters == ("degraded",)
    assert config.hard_examples.keep_raw is True
    assert config.hard_examples.outbox == tmp_path.resolve() / "hx.db"  # relative to device.toml
    assert HardExampleSettings().keep_raw is False  # features only unless the app opts in
    env = {"EC_HARD_EXAMPLES__FILTERS": "reached_cloud,exits_disagree", "EC_HARD_EXAMPLES__BATCH_SIZE": "8"}
    overridden = load_device_config(path, env=env).hard_examples
    assert overridden.filters == ("reached_cloud", "exits_disagree")
    assert overridden.batch_size == 8


def test_config_lists_every_problem() -> None:
    with pytest.raises(ConfigError) as err:
        load_device_config(
            env={
                "EC_HARD_EXAMPLES__FILTERS": "degraded,bogus",
                "EC_HARD_EXAMPLES__LOW_SCORE": "vibes",
                "EC_HARD_EXAMPLES__BATCH_SIZE": "1000",
                "EC_HARD_EXAMPLES__BACKOFF_BASE": "0",
                "EC_HARD_EXAMPLES__AUDIT_RATE": "1.5",
            }
        )
    text = str(err.value)
    for fragment in ("bogus", "low_score", "batch_size", "backoff_base", "audit_rate"):
        assert fragment in text
    with pytest.raises(ConfigError):
        LowConfidence(1.5)
    with pytest.raises(ConfigError):
        AuditSample(-0.1)
    with pytest.raises(ConfigError, match="unknown filter 'audit'"):  # the sample has its own setting
        HardExampleSettings(filters=("audit",))


def test_the_audit_sample_takes_a_uniform_share_whatever_the_cascade_did() -> None:
    n = 20000
    confident = np.tile(np.array([[0.98, 0.01, 0.01]], np.float32), (n, 1))
    answers = Answers(confident, confident, ["device"] * n, np.zeros(n, bool))
    assert HardExampleSelector.default().reasons(answers) == [()] * n  # no other filter sees them
    audit = AuditSample(0.05, np.random.default_rng(7))
    share = audit.select(answers).mean()
    assert 0.045 < share < 0.055
    assert not AuditSample(0.0).select(answers).any() and AuditSample(1.0).select(answers).all()
    # the audit reason is added to other reasons, so the audited records stay a uniform sample
    both = HardExampleSelector([ExitsDisagree(), AuditSample(1.0)]).reasons(_answers())
    assert both[1] == ("exits_disagree", "audit") and both[0] == ("audit",)
    assert [f.reason for f in HardExampleSelector.default().filters] == [
        "reached_cloud",
        "exits_disagree",
        "low_margin",
        "degraded",
        "unknown",
    ]  # the audit sample is off unless configured
    settings = HardExampleSettings(audit_rate=0.02)
    assert repr(HardExampleSelector.from_settings(settings).filters[-1]) == "AuditSample(0.02)"
