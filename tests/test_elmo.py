"""Tests of the ELMo text encoder on a TF1 Hub-format stand-in module.

The stand-in from mmgrounding.testing.standins has the real module's files,
signatures and output shapes and loads through the same `hub.load` path;
nothing here touches the network.
"""

import shutil

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_hub as hub

from mmgrounding import modules
from mmgrounding.encoders.elmo import ElmoEncoder, split_words
from mmgrounding.encoders.text import load_text_encoder, text_encoder_names
from mmgrounding.modules import ModuleError
from mmgrounding.testing import standins

CAPTIONS = ["A man in a red jacket walks a brown dog .", "dog", "Two kids play"]


@pytest.fixture(scope="module")
def modules_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("modules")
    standins.write_elmo_hub_module(folder / "ELMo", seed=5)
    return folder


@pytest.fixture(scope="module")
def encoder(modules_dir):
    return load_text_encoder("elmo", modules_dir)


@pytest.fixture(scope="module")
def outputs(encoder):
    return {name: value.numpy() for name, value in encoder(tf.constant(CAPTIONS)).items()}


def test_elmo_registered():
    assert "elmo" in text_encoder_names()


def test_encoder_frozen(encoder):
    assert not encoder.trainable
    assert encoder.trainable_weights == []


def test_output_shapes(outputs):
    assert sorted(outputs) == ["layers", "mask", "sentence_layers", "word_emb"]
    assert outputs["layers"].shape == (3, 11, 3, 1024)
    assert outputs["mask"].shape == (3, 11)
    assert outputs["sentence_layers"].shape == (3, 2, 1024)
    assert outputs["word_emb"].shape == (3, 11, 512)
    for name, value in outputs.items():
        assert value.dtype == np.float32, name
        assert np.isfinite(value).all(), name


def test_mask_counts_words(outputs):
    np.testing.assert_array_equal(outputs["mask"].sum(axis=1), [len(caption.split()) for caption in CAPTIONS])
    np.testing.assert_array_equal(outputs["mask"][2], [1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0])


def test_padding_positions_zero(outputs):
    padding = outputs["mask"] == 0
    assert np.all(outputs["layers"][padding] == 0)
    assert np.all(outputs["word_emb"][padding] == 0)
    assert np.any(outputs["layers"][~padding] != 0)


def test_first_layer_repeats_word_emb(outputs):
    word_emb = outputs["word_emb"]
    np.testing.assert_array_equal(outputs["layers"][:, :, 0, :512], word_emb)
    np.testing.assert_array_equal(outputs["layers"][:, :, 0, 512:], word_emb)


def test_sentence_layers_definition(outputs):
    for index, caption in enumerate(CAPTIONS):
        last = len(caption.split()) - 1
        for layer in (1, 2):
            lstm = outputs["layers"][index, :, layer]
            sentence = outputs["sentence_layers"][index, layer - 1]
            np.testing.assert_array_equal(sentence[:512], lstm[0, 512:])
            np.testing.assert_array_equal(sentence[512:], lstm[last, :512])


def test_padding_invariance(encoder, outputs):
    for index, caption in enumerate(CAPTIONS):
        alone = encoder(tf.constant([caption]))
        words = len(caption.split())
        np.testing.assert_allclose(alone["layers"][0].numpy(), outputs["layers"][index, :words], atol=1e-5)
        np.testing.assert_allclose(alone["word_emb"][0].numpy(), outputs["word_emb"][index, :words], atol=1e-5)
        np.testing.assert_allclose(alone["sentence_layers"][0].numpy(), outputs["sentence_layers"][index], atol=1e-5)


def test_batch_of_one(encoder):
    result = encoder(["A dog runs"])
    assert result["layers"].shape == (1, 3, 3, 1024)
    assert result["sentence_layers"].shape == (1, 2, 1024)
    np.testing.assert_array_equal(result["mask"].numpy(), [[1, 1, 1]])


def test_one_word_captions(encoder):
    result = encoder(tf.constant(["dog", "cat"]))
    assert result["layers"].shape == (2, 1, 3, 1024)
    np.testing.assert_array_equal(result["mask"].numpy(), [[1], [1]])
    lstm1 = result["layers"][0, 0, 1].numpy()
    np.testing.assert_array_equal(result["sentence_layers"][0, 0].numpy(), np.concatenate([lstm1[512:], lstm1[:512]]))
    assert not np.allclose(result["word_emb"][0].numpy(), result["word_emb"][1].numpy())


def test_words_split_like_python():
    captions = ["a  man\twalks\n", " \u00a0dog\u2003runs\u3000", "x\u200by"]
    words = split_words(tf.constant(captions)).to_list()
    assert words == [[word.encode() for word in caption.split()] for caption in captions]


def test_unicode_space_separates_words(encoder):
    spaced = encoder(tf.constant(["red\u00a0dog"]))
    plain = encoder(tf.constant(["red dog"]))
    np.testing.assert_array_equal(spaced["layers"].numpy(), plain["layers"].numpy())


def test_empty_caption_eager(encoder):
    with pytest.raises(ValueError, match=r"caption 1 \(b' \\t '\) has no words"):
        encoder(tf.constant(["a dog", " \t ", "a cat"]))


def test_empty_caption_in_function(encoder):
    call = tf.function(lambda captions: encoder(captions)["layers"])
    assert call(tf.constant(["a dog"])).shape == (1, 2, 3, 1024)
    with pytest.raises(tf.errors.InvalidArgumentError, match="a caption has no words"):
        call(tf.constant(["a dog", ""]))


def test_captions_must_be_vector(encoder):
    with pytest.raises(ValueError, match=r"string tensor \[batch\], got shape \(1, 1\)"):
        encoder(tf.constant([["a dog"]]))


def test_gradients_through_layer_mix(encoder):
    result = encoder(tf.constant(CAPTIONS))
    layer_logits = tf.Variable([0.1, -0.2, 0.3])
    layer_scale = tf.Variable(1.0)
    sentence_weights = tf.Variable([0.5, 0.5])
    with tf.GradientTape() as tape:
        mix = tf.nn.softmax(layer_logits)
        words = layer_scale * tf.einsum("btlf,l->btf", result["layers"], mix)  # [batch, tokens, 1024]
        sentence = tf.einsum("blf,l->bf", result["sentence_layers"], sentence_weights)  # [batch, 1024]
        loss = tf.reduce_sum(tf.square(words) * result["mask"][:, :, None]) + tf.reduce_sum(tf.sin(sentence))
    gradients = tape.gradient(loss, [layer_logits, layer_scale, sentence_weights])
    for variable, gradient in zip(["layer_logits", "layer_scale", "sentence_weights"], gradients):
        assert gradient is not None, variable
        assert np.all(np.isfinite(gradient.numpy())), variable
        assert np.any(gradient.numpy() != 0), variable


def test_stand_in_is_tf1_hub_module(modules_dir):
    module = hub.load(str(modules_dir / "ELMo"))
    assert module._is_hub_module_v1
    assert sorted(module.signatures) == ["default", "tokens"]
    expected = ["default", "elmo", "lstm_outputs1", "lstm_outputs2", "sequence_len", "word_emb"]
    assert sorted(module.signatures["tokens"].structured_outputs) == expected
    sentences = module.signatures["default"](default=tf.constant(["a red dog", "cat"]))
    assert sorted(sentences) == expected
    assert sentences["default"].shape == (2, 1024)
    assert sentences["elmo"].shape == (2, 3, 1024)
    np.testing.assert_array_equal(sentences["sequence_len"].numpy(), [3, 1])


def test_stand_in_signatures_agree(modules_dir):
    module = hub.load(str(modules_dir / "ELMo"))
    by_sentence = module.signatures["default"](default=tf.constant(["a red dog"]))
    by_tokens = module.signatures["tokens"](tokens=tf.constant([["a", "red", "dog"]]), sequence_len=tf.constant([3]))
    np.testing.assert_allclose(by_sentence["lstm_outputs2"].numpy(), by_tokens["lstm_outputs2"].numpy(), atol=1e-6)


def test_loads_without_hub_proto(tmp_path, modules_dir):
    shutil.copytree(modules_dir / "ELMo", tmp_path / "ELMo")
    (tmp_path / "ELMo" / "tfhub_module.pb").unlink()
    result = ElmoEncoder(tmp_path)(["a dog"])
    assert result["layers"].shape == (1, 2, 3, 1024)


def test_missing_module_named(tmp_path, monkeypatch):
    monkeypatch.setenv("TFHUB_CACHE_DIR", str(tmp_path / "empty_cache"))
    with pytest.raises(ModuleError, match="is missing the ELMo folder") as caught:
        load_text_encoder("elmo", tmp_path)
    assert str(tmp_path) in str(caught.value)


def test_missing_saved_model_named(tmp_path, modules_dir):
    shutil.copytree(modules_dir / "ELMo", tmp_path / "ELMo")
    (tmp_path / "ELMo" / "saved_model.pb").unlink()
    with pytest.raises(ModuleError, match="ELMo is missing saved_model.pb; unpack modules.tar.gz"):
        load_text_encoder("elmo", tmp_path)


def test_loads_handle_from_hub_cache(tmp_path, monkeypatch, modules_dir, outputs):
    monkeypatch.setenv("TFHUB_CACHE_DIR", str(tmp_path))
    handle = "https://tfhub.dev/google/elmo/3"
    shutil.copytree(modules_dir / "ELMo", modules.tfhub_cache_folder(handle))
    encoder = load_text_encoder("elmo", handle)
    assert encoder.module_path == str(modules.tfhub_cache_folder(handle))
    np.testing.assert_allclose(encoder(tf.constant(CAPTIONS))["layers"].numpy(), outputs["layers"], atol=1e-6)


def test_uncached_handle_not_downloaded(tmp_path, monkeypatch):
    monkeypatch.setenv("TFHUB_CACHE_DIR", str(tmp_path))
    with pytest.raises(ModuleError, match="allow_download=True"):
        load_text_encoder("elmo", "https://tfhub.dev/google/elmo/3")
