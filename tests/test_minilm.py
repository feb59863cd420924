"""Tests of the all-MiniLM-L6-v2 text encoder, its tokenizer and the safetensors reader.

The reference outputs in tests/fixtures/minilm/ come from Hugging Face
transformers and sentence-transformers (see make_reference.py there).
"""

import json
import struct
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from mmgrounding.encoders.minilm import MODULES_SUBDIR, MiniLMEncoder, locate_model_dir
from mmgrounding.encoders.safetensors_io import SafetensorsError, load_safetensors
from mmgrounding.encoders.text import load_text_encoder, text_encoder_names
from mmgrounding.encoders.wordpiece import NO_WORD, WordPieceTokenizer

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "minilm"


@pytest.fixture(scope="module")
def reference():
    with open(FIXTURES / "reference.json", encoding="utf-8") as stream:
        data = json.load(stream)
    arrays = np.load(FIXTURES / "reference.npz")
    data["hidden"] = [arrays[f"hidden_{index}"] for index in range(len(data["captions"]))]
    data["sentence"] = arrays["sentence"]
    return data


@pytest.fixture(scope="module")
def model_dir():
    return locate_model_dir(None)


@pytest.fixture(scope="module")
def tokenizer(model_dir):
    return WordPieceTokenizer.from_files(model_dir / "vocab.txt", model_dir / "tokenizer_config.json")


@pytest.fixture(scope="module")
def encoder():
    return load_text_encoder("minilm", None)


# safetensors reader


def write_safetensors(path, entries, data, header_length=None):
    header = json.dumps(entries).encode("utf-8")
    length = len(header) if header_length is None else header_length
    path.write_bytes(struct.pack("<Q", length) + header + data)


def test_safetensors_round_trip(tmp_path):
    weights = np.arange(6, dtype="<f4").reshape(2, 3) / 7
    ids = np.array([-1, 2**40], dtype="<i8")
    half = np.array([0.5, -2.0], dtype="<f2")
    bfloat = np.array([1.0, -3.5, 2.0**70], dtype=np.float32)
    bfloat_bits = (bfloat.view(np.uint32) >> 16).astype("<u2")  # these values are exact in bfloat16
    blobs = [weights.tobytes(), ids.tobytes(), half.tobytes(), bfloat_bits.tobytes()]
    offsets = np.cumsum([0] + [len(blob) for blob in blobs]).tolist()
    entries = {
        "__metadata__": {"format": "pt"},
        "weights": {"dtype": "F32", "shape": [2, 3], "data_offsets": offsets[0:2]},
        "ids": {"dtype": "I64", "shape": [2], "data_offsets": offsets[1:3]},
        "half": {"dtype": "F16", "shape": [2], "data_offsets": offsets[2:4]},
        "bfloat": {"dtype": "BF16", "shape": [3], "data_offsets": offsets[3:5]},
        "empty": {"dtype": "F32", "shape": [0, 4], "data_offsets": [offsets[4], offsets[4]]},
    }
    path = tmp_path / "small.safetensors"
    write_safetensors(path, entries, b"".join(blobs))

    tensors = load_safetensors(path)

    assert sorted(tensors) == ["bfloat", "empty", "half", "ids", "weights"]
    np.testing.assert_array_equal(tensors["weights"], weights)
    np.testing.assert_array_equal(tensors["ids"], ids)
    np.testing.assert_array_equal(tensors["half"], half)
    assert tensors["bfloat"].dtype == np.float32
    np.testing.assert_array_equal(tensors["bfloat"], bfloat)
    assert tensors["empty"].shape == (0, 4)
    assert tensors["weights"].flags.writeable


def test_safetensors_real_model_shapes(model_dir):
    tensors = load_safetensors(model_dir / "model.safetensors")
    assert tensors["embeddings.word_embeddings.weight"].shape == (30522, 384)
    assert tensors["encoder.layer.5.intermediate.dense.weight"].shape == (1536, 384)
    assert tensors["embeddings.word_embeddings.weight"].dtype == np.float32
    np.testing.assert_array_equal(tensors["embeddings.position_ids"][0, :4], [0, 1, 2, 3])


@pytest.mark.parametrize(
    "entry, data, message",
    [
        ({"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}, b"\0" * 4, "outside"),
        ({"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}, b"\0" * 8, "need 12"),
        ({"dtype": "F8_E4M3", "shape": [2], "data_offsets": [0, 2]}, b"\0" * 2, "unsupported dtype"),
        ({"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]}, b"\0" * 4, "invalid shape"),
        ({"dtype": "F32", "shape": [1], "data_offsets": [4, 0]}, b"\0" * 4, "outside"),
        ({"dtype": "F32", "shape": [1], "data_offsets": "0-4"}, b"\0" * 4, "invalid data_offsets"),
    ],
)
def test_safetensors_invalid_entry(tmp_path, entry, data, message):
    path = tmp_path / "bad.safetensors"
    write_safetensors(path, {"kernel": entry}, data)
    with pytest.raises(SafetensorsError, match=message) as error:
        load_safetensors(path)
    assert str(path) in str(error.value)
    assert "'kernel'" in str(error.value)


def test_safetensors_overlapping_tensors(tmp_path):
    path = tmp_path / "overlap.safetensors"
    entries = {
        "first": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
        "second": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]},
    }
    write_safetensors(path, entries, b"\0" * 12)
    with pytest.raises(SafetensorsError, match="overlap"):
        load_safetensors(path)


def test_safetensors_bad_header(tmp_path):
    too_long = tmp_path / "too_long.safetensors"
    write_safetensors(too_long, {}, b"", header_length=10_000)
    with pytest.raises(SafetensorsError, match="header length 10000"):
        load_safetensors(too_long)

    short = tmp_path / "short.safetensors"
    short.write_bytes(b"\1\0")
    with pytest.raises(SafetensorsError, match="too short"):
        load_safetensors(short)

    not_json = tmp_path / "not_json.safetensors"
    not_json.write_bytes(struct.pack("<Q", 5) + b"{oops")
    with pytest.raises(SafetensorsError, match="not valid UTF-8 JSON"):
        load_safetensors(not_json)

    with pytest.raises(FileNotFoundError, match="missing.safetensors"):
        load_safetensors(tmp_path / "missing.safetensors")


# WordPiece tokenizer


def test_tokenizer_matches_reference_ids(tokenizer, reference):
    cases = list(zip(reference["captions"], reference["token_ids"]))
    cases += [(case["text"], case["token_ids"]) for case in reference["tokenizer_cases"]]
    for text, expected in cases:
        assert tokenizer.encode(text, max_pieces=512).piece_ids == expected, text


def test_tokenizer_word_index(tokenizer):
    encoded = tokenizer.encode("Two DOGS play, frisbee!")
    pieces = [tokenizer.tokenize(word) for word in "Two DOGS play, frisbee!".split()]
    assert pieces == [["two"], ["dogs"], ["play", ","], ["fr", "##is", "##bee", "!"]]
    assert encoded.word_index == [NO_WORD, 0, 1, 2, 2, 3, 3, 3, 3, NO_WORD]
    assert encoded.num_words == 4


def test_tokenizer_truncates_whole_words(tokenizer):
    # "frisbee!" has 4 pieces; with 2 special tokens, 7 pieces keep 2 words.
    encoded = tokenizer.encode("two dogs frisbee! run", max_pieces=7)
    assert encoded.num_words == 2
    assert encoded.word_index == [NO_WORD, 0, 1, NO_WORD]
    assert tokenizer.encode("two dogs frisbee! run", max_pieces=8).num_words == 3


def test_tokenizer_unknown_words(tokenizer):
    assert tokenizer.wordpiece("a" * 101) == ["[UNK]"]
    assert tokenizer.wordpiece("a" * 100) != ["[UNK]"]
    assert tokenizer.tokenize("\U0001F600") == ["[UNK]"]
    # A word of only a zero-width space yields no basic token; it still
    # counts as a word so that word t stays caption.split()[t].
    encoded = tokenizer.encode("cat \u200b dog")
    assert encoded.piece_ids[2] == tokenizer.unk_id
    assert encoded.word_index == [NO_WORD, 0, 1, 2, NO_WORD]


def test_tokenizer_rejects_bad_arguments(tokenizer):
    with pytest.raises(ValueError, match="max_pieces=1"):
        tokenizer.encode("a dog", max_pieces=1)
    with pytest.raises(ValueError, match=r"\[CLS\]"):
        WordPieceTokenizer({"[PAD]": 0, "[UNK]": 1})


# Encoder against the reference


def test_encoder_is_registered():
    assert "minilm" in text_encoder_names()


def test_encoder_is_frozen(encoder):
    assert encoder.trainable is False
    assert encoder.trainable_weights == []
    assert len(encoder.non_trainable_weights) == 5 + 6 * 16


def test_encoder_piece_ids_match_reference(encoder, reference):
    pieces = encoder.encode_pieces(tf.constant(reference["captions"]))
    piece_ids = pieces["piece_ids"].numpy()
    counts = pieces["piece_mask"].numpy().sum(axis=1)
    for row, expected in enumerate(reference["token_ids"]):
        assert counts[row] == len(expected)
        assert piece_ids[row, : len(expected)].tolist() == expected


def test_encoder_hidden_states_match_reference(encoder, reference):
    stride = reference["feature_stride"]
    pieces = encoder.encode_pieces(tf.constant(reference["captions"]))
    piece_layers = pieces["piece_layers"].numpy()  # [batch, pieces, layers, features]
    for row, expected in enumerate(reference["hidden"]):  # expected [layers, pieces, features / stride]
        actual = piece_layers[row, : expected.shape[1], :, ::stride].transpose(1, 0, 2)
        np.testing.assert_allclose(actual, expected, rtol=0, atol=1e-4, err_msg=reference["captions"][row])


def test_encoder_sentence_matches_reference(encoder, reference):
    sentence = encoder(tf.constant(reference["captions"]))["sentence_layers"].numpy()
    assert sentence.shape == (len(reference["captions"]), 1, 384)
    np.testing.assert_allclose(sentence[:, 0], reference["sentence"], rtol=0, atol=1e-4)
    np.testing.assert_allclose(np.linalg.norm(sentence[:, 0], axis=-1), 1.0, atol=1e-5)


def test_encoder_words_pool_reference(encoder, tokenizer, reference):
    stride = reference["feature_stride"]
    outputs = encoder(tf.constant(reference["captions"]))
    layers = outputs["layers"].numpy()
    mask = outputs["mask"].numpy()
    longest = max(len(caption.split()) for caption in reference["captions"])
    assert layers.shape == (len(reference["captions"]), longest, 7, 384)

    for row, caption in enumerate(reference["captions"]):
        words = caption.split()
        word_index = np.array(tokenizer.encode(caption).word_index)
        hidden = reference["hidden"][row]  # [layers, pieces, features / stride]
        expected = np.stack([hidden[:, word_index == word].mean(axis=1) for word in range(len(words))])
        np.testing.assert_allclose(layers[row, : len(words), :, ::stride], expected, rtol=0, atol=1e-4)
        np.testing.assert_array_equal(mask[row], np.arange(longest) < len(words))
        np.testing.assert_array_equal(layers[row, len(words) :], 0.0)


# Encoder invariants


def test_encoder_padding_does_not_change_outputs(encoder):
    caption = "A dog catches a frisbee."
    longer = " ".join(["A crowd of tourists photographs the old lighthouse at sunset."] * 6)
    alone = encoder(tf.constant([caption]))
    batched = encoder(tf.constant([longer, caption]))
    words = len(caption.split())
    assert batched["layers"].shape[1] > words
    np.testing.assert_allclose(batched["layers"].numpy()[1, :words], alone["layers"].numpy()[0], rtol=0, atol=1e-5)
    np.testing.assert_array_equal(batched["mask"].numpy()[1, words:], 0.0)
    np.testing.assert_allclose(
        batched["sentence_layers"].numpy()[1], alone["sentence_layers"].numpy()[0], rtol=0, atol=1e-5
    )


def test_encoder_empty_caption(encoder):
    outputs = encoder(tf.constant(["", "a red kite"]))
    assert outputs["layers"].shape == (2, 3, 7, 384)
    np.testing.assert_array_equal(outputs["mask"].numpy(), [[0, 0, 0], [1, 1, 1]])
    np.testing.assert_array_equal(outputs["layers"].numpy()[0], 0.0)
    assert np.all(np.isfinite(outputs["sentence_layers"].numpy()))

    alone = encoder(tf.constant([""]))
    assert alone["layers"].shape == (1, 1, 7, 384)
    np.testing.assert_array_equal(alone["mask"].numpy(), [[0.0]])


def test_encoder_batch_of_one_matches_batch(encoder, reference):
    captions = reference["captions"]
    batched = encoder(tf.constant(captions))
    single = encoder(tf.constant(captions[2:3]))
    words = len(captions[2].split())
    np.testing.assert_allclose(single["layers"].numpy()[0], batched["layers"].numpy()[2, :words], atol=1e-5)


def test_encoder_truncates_to_max_pieces(model_dir):
    encoder = MiniLMEncoder(model_dir, max_pieces=8)
    caption = "Two dogs play fetch with a frisbee on the beach"
    outputs = encoder(tf.constant([caption, "a cat"]))
    # 6 pieces fit: two dogs play fetch with a (frisbee needs 3 pieces).
    np.testing.assert_array_equal(outputs["mask"].numpy(), [[1] * 6, [1, 1, 0, 0, 0, 0]])
    assert encoder.encode_pieces(tf.constant([caption]))["piece_ids"].shape == (1, 8)
    with pytest.raises(ValueError, match="max_pieces=513"):
        MiniLMEncoder(model_dir, max_pieces=513)


def test_encoder_in_tf_function_and_dataset(encoder):
    captions = ["a dog runs", "two birds fly over the lake", "snow"]
    eager = encoder(tf.constant(captions))

    traced = tf.function(encoder, input_signature=[tf.TensorSpec([None], tf.string)])
    graph_outputs = traced(tf.constant(captions))
    np.testing.assert_allclose(graph_outputs["layers"].numpy(), eager["layers"].numpy(), atol=1e-5)
    concrete = traced.get_concrete_function()
    assert concrete.structured_outputs["layers"].shape.as_list() == [None, None, 7, 384]
    assert concrete.structured_outputs["sentence_layers"].shape.as_list() == [None, 1, 384]

    dataset = tf.data.Dataset.from_tensor_slices(captions).batch(2).map(encoder)
    batches = list(dataset)
    np.testing.assert_allclose(batches[0]["mask"].numpy(), eager["mask"].numpy()[:2, :6])
    np.testing.assert_allclose(batches[1]["sentence_layers"].numpy(), eager["sentence_layers"].numpy()[2:], atol=1e-5)


def test_encoder_rejects_bad_captions(encoder):
    with pytest.raises(ValueError, match="shape \\[batch\\]"):
        encoder(tf.constant("a dog"))
    with pytest.raises(ValueError, match="not valid UTF-8"):
        encoder(tf.constant([b"caf\xe9"]))
    traced = tf.function(encoder)
    with pytest.raises(tf.errors.OpError, match="not valid UTF-8"):
        traced(tf.constant([b"caf\xe9"]))


def test_encoder_loads_from_modules_dir(tmp_path, model_dir):
    local = tmp_path / MODULES_SUBDIR
    local.mkdir()
    for name in ("config.json", "vocab.txt", "model.safetensors", "tokenizer_config.json"):
        (local / name).symlink_to(model_dir / name)
    assert load_text_encoder("minilm", tmp_path).model_dir == local

    (local / "vocab.txt").unlink()
    with pytest.raises(FileNotFoundError, match="vocab.txt"):
        load_text_encoder("minilm", tmp_path)
