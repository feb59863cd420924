"""Invariants of the model's layers and of the mini preset end to end."""

import dataclasses
import json

import keras
import numpy as np
import pytest
import tensorflow as tf

from mmgrounding.config import PRESETS, Config, config_from_dict, get_preset, load_config, save_config
from mmgrounding.model.mapping import VisualMapping
from mmgrounding.model.text_heads import BiLSTMTextHead, MixTextHead
from mmgrounding.training import learning_rate_for_epoch


def test_presets_round_trip_through_json(tmp_path):
    for name, preset in PRESETS.items():
        save_config(preset, tmp_path / f"{name}.json")
        assert load_config(tmp_path / f"{name}.json") == preset


def test_config_rejects_unknown_fields():
    with pytest.raises(ValueError, match="unknown train fields"):
        get_preset("mini").replace(train={"epoch": 3})
    with pytest.raises(ValueError, match="unknown config sections"):
        config_from_dict({"optimizer": {}})
    with pytest.raises(ValueError, match="unknown preset"):
        get_preset("resnet")


def test_paper_constants_in_presets():
    for name in ("vgg_bilstm", "vgg_elmo", "pnasnet_elmo"):
        config = get_preset(name)
        assert config.common_dim == 1024
        assert config.train.batch_size == 32
        assert config.model.gamma_word == 5.0
        assert config.model.gamma_loss == 10.0
        assert config.model.leaky_relu_alpha == 0.25
        assert config.model.weight_decay == 5e-4
    assert get_preset("pnasnet_elmo").visual.mapping_widths == (2048, 2048, 1024)
    assert get_preset("vgg_bilstm").text.head == "bilstm"


def test_learning_rate_schedule_halves_then_quarters():
    config = get_preset("vgg_elmo")
    rates = [learning_rate_for_epoch(config, epoch) for epoch in range(20)]
    assert rates[:9] == [1e-3] * 9
    assert rates[9:14] == [5e-4] * 5
    assert rates[14:] == [2.5e-4] * 6


def test_visual_mapping_shapes_norm_and_penalty():
    levels = {
        "fine": tf.random.normal([2, 12, 8, 5]),  # non-square, twice the grid
        "grid": tf.random.normal([2, 6, 4, 7]),
        "coarse": tf.random.normal([2, 3, 2, 3]),
    }
    mapping = VisualMapping(("fine", "grid", "coarse"), "grid", (16, 8), alpha=0.25, weight_decay=5e-4)
    visual = mapping(levels)
    assert visual.shape == (2, 6, 4, 3, 8)
    np.testing.assert_allclose(np.linalg.norm(visual.numpy(), axis=-1), 1.0, atol=1e-5)
    kernels = [w for w in mapping.weights if "kernel" in w.path]
    assert len(kernels) == 6
    # TF1 convention: 5e-4 * sum(w^2) / 2 over every kernel.
    expected = 5e-4 * sum(float(np.sum(np.square(k.numpy()))) for k in kernels) / 2
    assert float(tf.add_n(mapping.losses)) == pytest.approx(expected, rel=1e-5)


def test_visual_mapping_rejects_unknown_grid_level():
    with pytest.raises(ValueError, match="grid_level 'conv9'"):
        VisualMapping(("a", "b"), "conv9", (8,))


def _text_features(batch, tokens, lengths, seed=0):
    rng = np.random.default_rng(seed)
    mask = (np.arange(tokens)[None] < np.asarray(lengths)[:, None]).astype(np.float32)
    return {
        "layers": tf.constant(rng.normal(size=(batch, tokens, 3, 12)) * mask[..., None, None], tf.float32),
        "mask": tf.constant(mask),
        "sentence_layers": tf.constant(rng.normal(size=(batch, 2, 12)), tf.float32),
        "word_emb": tf.constant(rng.normal(size=(batch, tokens, 6)) * mask[..., None], tf.float32),
    }


@pytest.mark.parametrize("head_class", [MixTextHead, BiLSTMTextHead])
def test_text_heads_are_unit_norm(head_class):
    head = head_class(10) if head_class is MixTextHead else head_class(10, units=6)
    features = _text_features(3, 5, [5, 2, 1])
    out = head(features)
    assert out["words"].shape == (3, 5, 10)
    assert out["sentence"].shape == (3, 10)
    real = features["mask"].numpy() > 0
    np.testing.assert_allclose(np.linalg.norm(out["words"].numpy(), axis=-1)[real], 1.0, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(out["sentence"].numpy(), axis=-1), 1.0, atol=1e-5)


def test_bilstm_head_is_padding_invariant():
    head = BiLSTMTextHead(10, units=6)
    padded = _text_features(2, 7, [3, 7])
    alone = {key: value[:1, :3] if key != "sentence_layers" else value[:1] for key, value in padded.items()}
    out_padded = head(padded)
    out_alone = head(alone)
    np.testing.assert_allclose(out_padded["words"][0, :3], out_alone["words"][0], atol=1e-5)
    np.testing.assert_allclose(out_padded["sentence"][0], out_alone["sentence"][0], atol=1e-5)


def test_mix_head_gradients_reach_layer_weights():
    head = MixTextHead(10)
    features = _text_features(2, 4, [4, 2])
    head(features)
    # With zero biases the normalised word vectors do not depend on the
    # layer scale at all, so give the biases the values training would.
    rng = np.random.default_rng(0)
    for weight in head.word_stack.weights:
        if "bias" in weight.path:
            weight.assign(rng.normal(size=weight.shape).astype(np.float32))
    with tf.GradientTape() as tape:
        out = head(features)
        loss = tf.reduce_sum(out["words"][:, :, 0]) + tf.reduce_sum(out["sentence"][:, 0])
    gradients = tape.gradient(loss, [head.layer_logits, head.layer_scale, head.sentence_weights])
    for gradient in gradients:
        assert gradient is not None
        assert np.all(np.isfinite(gradient.numpy()))
        assert np.abs(gradient.numpy()).sum() > 1e-6


def test_mini_model_trains_only_its_heads(mini_model):
    model, _ = mini_model
    head_weights = {id(v) for v in model.visual_mapping.trainable_weights + model.text_head.trainable_weights}
    assert {id(v) for v in model.trainable_variables} == head_weights
    assert model.backbone.trainable_weights == []
    assert model.text_encoder.trainable_weights == []


def test_mini_model_batch_of_one_and_padding(mini_model):
    model, config = mini_model
    size = config.visual.image_size
    image = tf.random.uniform([1, size, size, 3], 0, 255, seed=1)
    visual = model.encode_images(image)
    assert visual.shape[1:] == (14, 14, 4, config.common_dim)
    alone = model.phrase_heatmaps(visual, tf.constant(["a ginger cat"]))
    padded = model.phrase_heatmaps(
        tf.concat([visual, visual], axis=0),
        tf.constant(["a ginger cat", "a ginger cat lies on a wooden floor next to a red ball"]),
    )
    np.testing.assert_allclose(alone["heatmap"][0], padded["heatmap"][0], atol=1e-5)


def test_mini_model_step_lowers_loss_on_fixed_batch(mini_model):
    model, config = mini_model
    size = config.visual.image_size
    rng = np.random.default_rng(0)
    batch = {
        "image": tf.constant(rng.uniform(0, 255, (4, size, size, 3)), tf.float32),
        "caption": tf.constant(["a red ball", "two dogs on grass", "a city street at night", "a bowl of soup"]),
    }
    model.compile(optimizer=keras.optimizers.Adam(1e-3))
    first = model.train_on_batch(batch, return_dict=True)
    for _ in range(5):
        last = model.train_on_batch(batch, return_dict=True)
    assert np.isfinite(first["loss"])
    assert last["retrieval_loss"] < first["retrieval_loss"]


def test_config_file_errors_name_the_file(tmp_path):
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    with pytest.raises(ValueError, match="broken.json is not valid JSON"):
        load_config(broken)
    with pytest.raises(FileNotFoundError, match="missing.json not found"):
        load_config(tmp_path / "missing.json")
