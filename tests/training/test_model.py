"""The multi-exit network: stage shapes compose, the joint model has three logits outputs."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from edgecascade.training.model import BinarySign, ModelConfig, Stages, build_stages


@pytest.fixture(scope="module")
def stages() -> Stages:
    return build_stages(ModelConfig())


def test_stage_shapes_compose(stages: Stages) -> None:
    assert stages.device.input_shape == (None, 28, 28, 1)
    (logits1, cut1), (logits2, cut2) = stages.device.outputs, stages.gateway.outputs
    assert tuple(logits1.shape) == (None, 10) and tuple(cut1.shape) == (None, 7, 7, 32)
    assert stages.gateway.input_shape == tuple(cut1.shape)
    assert tuple(logits2.shape) == (None, 10) and tuple(cut2.shape) == (None, 7, 7, 64)
    assert stages.cloud.input_shape == tuple(cut2.shape)
    assert stages.cloud.output_shape == (None, 10)


def test_joint_model_chains_the_stages(stages: Stages) -> None:
    assert len(stages.joint.outputs) == 3
    assert all(tuple(o.shape) == (None, 10) for o in stages.joint.outputs)
    x = np.random.default_rng(0).uniform(size=(3, 28, 28, 1)).astype(np.float32)
    joint = [np.asarray(o) for o in stages.joint(x, training=False)]
    l1, f1 = stages.device(x, training=False)
    l2, f2 = stages.gateway(f1, training=False)
    l3 = stages.cloud(f2, training=False)
    for a, b in zip(joint, (l1, l2, l3), strict=True):
        np.testing.assert_allclose(a, np.asarray(b), rtol=1e-5, atol=1e-5)
    assert stages.joint.count_params() == sum(
        m.count_params() for m in (stages.device, stages.gateway, stages.cloud)
    )


def test_exits_output_logits_not_probabilities(stages: Stages) -> None:
    for model, layer in (
        (stages.device, "exit1_logits"),
        (stages.gateway, "exit2_logits"),
        (stages.cloud, "exit3_logits"),
    ):
        assert model.get_layer(layer).activation is keras.activations.linear


def test_device_stage_is_cheap(stages: Stages) -> None:
    assert 3_000 <= stages.device.count_params() <= 80_000  # int8: under 100 KB
    assert stages.cloud.count_params() > stages.gateway.count_params() > stages.device.count_params()


def test_cut_shapes_follow_the_config() -> None:
    s = build_stages(ModelConfig.tiny())
    assert tuple(s.device.outputs[1].shape) == (None, 7, 7, 16)
    wide = build_stages(ModelConfig(cut1_channels=4, cut2_channels=8, cut2_pool=False, cut1_encoding="int8"))
    assert tuple(wide.device.outputs[1].shape) == (None, 7, 7, 4)
    assert tuple(wide.gateway.outputs[1].shape) == (None, 7, 7, 8)
    assert wide.cloud.output_shape == (None, 10)


def test_binarised_cut_is_exactly_plus_minus_one_with_straight_through_gradients() -> None:
    import tensorflow as tf

    sign = BinarySign()
    x = tf.constant([[-2.0, -0.5, 0.0, 0.3, 1.5]])
    np.testing.assert_array_equal(np.asarray(sign(x)), [[-1, -1, 1, 1, 1]])
    np.testing.assert_array_equal(np.asarray(sign(x, training=True)), [[-1, -1, 1, 1, 1]])
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = tf.reduce_sum(sign(x, training=True) * tf.constant([[1.0, 2.0, 3.0, 4.0, 5.0]]))
    # hard-tanh STE: the upstream gradient passes where |x| <= 1 and is zero outside
    np.testing.assert_array_equal(np.asarray(tape.gradient(y, x)), [[0.0, 2.0, 3.0, 4.0, 0.0]])


def test_cut_encoding_is_checked_before_training() -> None:
    with pytest.raises(ValueError):
        ModelConfig(cut1_encoding="2bit")
    s = build_stages(ModelConfig.tiny())
    assert any(isinstance(layer, BinarySign) for layer in s.device.layers)
    assert not any(isinstance(layer, BinarySign) for layer in s.gateway.layers)


def test_separable_blocks_deepen_the_device_stage_at_few_parameters() -> None:
    plain = build_stages(ModelConfig()).device
    deeper = build_stages(ModelConfig(device_separable=(0, 1))).device
    dw = [layer for layer in deeper.layers if isinstance(layer, keras.layers.DepthwiseConv2D)]
    assert [layer.name for layer in dw] == ["d2s1_dw"]
    assert deeper.output_shape == plain.output_shape
    added = deeper.count_params() - plain.count_params()
    assert 0 < added < 64 * 64 * 9 / 4  # well under a quarter of a full 3x3 conv at 64 channels
    with pytest.raises(ValueError, match="one count per device block"):
        ModelConfig(device_separable=(1,))


def test_model_config_lists_every_wrong_setting() -> None:
    with pytest.raises(ValueError) as info:
        ModelConfig(device_filters=(32, 0), cut1_channels=True, dropout=1.5, cloud_dense=2.5)  # type: ignore[arg-type]
    message = str(info.value)
    for name in ("device_filters", "cut1_channels", "dropout", "cloud_dense"):
        assert name in message
    assert "gateway_filters" not in message
