"""BERT uncased WordPiece tokenizer that keeps track of whitespace words.

Written from the algorithm of BERT (Devlin et al., 2019). Basic tokenization
drops control characters, normalises whitespace, pads CJK ideographs with
spaces, lower-cases, strips accents and splits off punctuation. Greedy
longest-match-first WordPiece then splits each token over a fixed vocabulary
and marks word-internal pieces with `##`. The tests compare the ids with the
Hugging Face `tokenizers` 0.23.3 BERT tokenizer on the all-MiniLM-L6-v2
vocabulary.

The grounding model works on whitespace words: word t of the text encoder's
output is `caption.split()[t]`. `WordPieceTokenizer.encode` therefore
tokenizes each whitespace word on its own and returns, for every piece, the
index of the word it came from.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import unicodedata
from pathlib import Path
from typing import Mapping

logger = logging.getLogger(__name__)

CLS_TOKEN = "[CLS]"
SEP_TOKEN = "[SEP]"
PAD_TOKEN = "[PAD]"
UNK_TOKEN = "[UNK]"

# Word index given to [CLS], [SEP] and padding, which belong to no word.
NO_WORD = -1


@dataclasses.dataclass(frozen=True)
class EncodedCaption:
    """One caption as model input.

    Attributes:
        piece_ids: vocabulary ids [pieces], `[CLS] ... [SEP]`.
        word_index: [pieces] index into `caption.split()` of the word each
            piece came from, `NO_WORD` for [CLS] and [SEP].
        num_words: how many leading words of `caption.split()` are kept; the
            rest were dropped by truncation.
    """

    piece_ids: list[int]
    word_index: list[int]
    num_words: int


class WordPieceTokenizer:
    """BERT tokenizer: basic tokenization, then WordPiece over `vocab`.

    Args:
        vocab: token -> id.
        lower_case: lower-case text before WordPiece (uncased models).
        strip_accents: remove combining marks after NFD decomposition. `None`
            follows `lower_case`, as in the Hugging Face BERT tokenizer.
        tokenize_chinese_chars: treat every CJK ideograph as its own word.
        max_word_chars: words longer than this become a single [UNK].
    """

    def __init__(
        self,
        vocab: Mapping[str, int],
        *,
        lower_case: bool = True,
        strip_accents: bool | None = None,
        tokenize_chinese_chars: bool = True,
        max_word_chars: int = 100,
    ):
        missing = [token for token in (CLS_TOKEN, SEP_TOKEN, PAD_TOKEN, UNK_TOKEN) if token not in vocab]
        if missing:
            raise ValueError(f"vocabulary lacks the special tokens {missing}; use a BERT vocab.txt")
        self.vocab = dict(vocab)
        self.lower_case = lower_case
        self.strip_accents = lower_case if strip_accents is None else strip_accents
        self.tokenize_chinese_chars = tokenize_chinese_chars
        self.max_word_chars = max_word_chars
        self.cls_id = self.vocab[CLS_TOKEN]
        self.sep_id = self.vocab[SEP_TOKEN]
        self.pad_id = self.vocab[PAD_TOKEN]
        self.unk_id = self.vocab[UNK_TOKEN]

    @classmethod
    def from_files(
        cls, vocab_path: str | os.PathLike, config_path: str | os.PathLike | None = None
    ) -> "WordPieceTokenizer":
        """Build from a `vocab.txt` (one token a line, id = line number) and
        an optional Hugging Face `tokenizer_config.json`."""
        vocab_path = Path(vocab_path)
        if not vocab_path.is_file():
            raise FileNotFoundError(f"vocabulary file {vocab_path} not found")
        with open(vocab_path, encoding="utf-8") as stream:
            vocab = {line.rstrip("\n"): index for index, line in enumerate(stream)}

        options = {}
        if config_path is not None:
            with open(config_path, encoding="utf-8") as stream:
                config = json.load(stream)
            options = {
                "lower_case": bool(config.get("do_lower_case", True)),
                "strip_accents": config.get("strip_accents"),
                "tokenize_chinese_chars": bool(config.get("tokenize_chinese_chars", True)),
            }
            if not config.get("do_basic_tokenize", True):
                raise ValueError(f"{config_path}: do_basic_tokenize=false is not supported")
        return cls(vocab, **options)

    def basic_tokenize(self, text: str) -> list[str]:
        """Split `text` into normalised words and punctuation marks."""
        text = _clean_text(text)
        if self.tokenize_chinese_chars:
            text = "".join(f" {char} " if _is_chinese_char(char) else char for char in text)

        tokens = []
        for token in text.split():
            if self.lower_case:
                token = token.lower()
            if self.strip_accents:
                token = _strip_accents(token)
            tokens.extend(_split_on_punctuation(token))
        return tokens

    def wordpiece(self, token: str) -> list[str]:
        """Split one basic token into the longest vocabulary pieces, left to right.

        A token with a part that no vocabulary entry matches, or longer than
        `max_word_chars`, becomes the single piece [UNK].
        """
        if len(token) > self.max_word_chars:
            return [UNK_TOKEN]
        pieces = []
        start = 0
        while start < len(token):
            end = len(token)
            while end > start:
                candidate = token[start:end] if start == 0 else "##" + token[start:end]
                if candidate in self.vocab:
                    break
                end -= 1
            if end == start:
                return [UNK_TOKEN]
            pieces.append(candidate)
            start = end
        return pieces

    def tokenize(self, text: str) -> list[str]:
        """Return the word pieces of `text`, without [CLS] and [SEP]."""
        return [piece for token in self.basic_tokenize(text) for piece in self.wordpiece(token)]

    def encode(self, caption: str, max_pieces: int = 128) -> EncodedCaption:
        """Tokenize `caption` into `[CLS] pieces [SEP]` with a word index per piece.

        Each word of `caption.split()` is tokenized on its own. This equals
        tokenizing the whole caption, except around the characters that
        `str.split` treats as whitespace and BERT does not (vertical tab,
        form feed, U+001C..U+001F, U+0085, U+2028, U+2029).
        A word that yields no piece (for example only control characters)
        becomes [UNK], so that every kept word has a vector and the word mask
        has no gaps.

        Truncation keeps whole words: the caption is cut before the first
        word whose pieces do not all fit into `max_pieces`, which counts
        [CLS] and [SEP].
        """
        if max_pieces < 2:
            raise ValueError(f"max_pieces={max_pieces} leaves no room for [CLS] and [SEP]; use at least 2")

        piece_ids = [self.cls_id]
        word_index = [NO_WORD]
        num_words = 0
        budget = max_pieces - 2
        for index, word in enumerate(caption.split()):
            ids = [self.vocab[piece] for piece in self.tokenize(word)] or [self.unk_id]
            if len(ids) > budget:
                break
            budget -= len(ids)
            piece_ids.extend(ids)
            word_index.extend([index] * len(ids))
            num_words = index + 1
        piece_ids.append(self.sep_id)
        word_index.append(NO_WORD)
        return EncodedCaption(piece_ids=piece_ids, word_index=word_index, num_words=num_words)


def _clean_text(text: str) -> str:
    """Drop NUL, U+FFFD and control characters; map whitespace to a space."""
    kept = []
    for char in text:
        code = ord(char)
        if code == 0 or code == 0xFFFD or _is_control(char):
            continue
        kept.append(" " if _is_whitespace(char) else char)
    return "".join(kept)


def _is_whitespace(char: str) -> bool:
    return char in " \t\n\r" or unicodedata.category(char) == "Zs"


def _is_control(char: str) -> bool:
    # Tab, newline and carriage return are Unicode controls, but BERT treats
    # them as whitespace.
    if char in "\t\n\r":
        return False
    return unicodedata.category(char).startswith("C")


def _is_punctuation(char: str) -> bool:
    code = ord(char)
    # BERT splits off every non-alphanumeric ASCII symbol, including ones
    # such as "$" and "^" that Unicode files under symbols, not punctuation.
    if 33 <= code <= 47 or 58 <= code <= 64 or 91 <= code <= 96 or 123 <= code <= 126:
        return True
    return unicodedata.category(char).startswith("P")


def _is_chinese_char(char: str) -> bool:
    # The CJK Unified Ideographs blocks and their extensions, as in BERT.
    # Japanese kana and Korean Hangul are not included.
    code = ord(char)
    return (
        0x4E00 <= code <= 0x9FFF
        or 0x3400 <= code <= 0x4DBF
        or 0x20000 <= code <= 0x2A6DF
        or 0x2A700 <= code <= 0x2B73F
        or 0x2B740 <= code <= 0x2B81F
        or 0x2B820 <= code <= 0x2CEAF
        or 0xF900 <= code <= 0xFAFF
        or 0x2F800 <= code <= 0x2FA1F
    )


def _strip_accents(text: str) -> str:
    return "".join(char for char in unicodedata.normalize("NFD", text) if unicodedata.category(char) != "Mn")


def _split_on_punctuation(token: str) -> list[str]:
    """Split `token` so that every punctuation character is its own token."""
    parts: list[str] = []
    current = ""
    for char in token:
        if _is_punctuation(char):
            if current:
                parts.append(current)
                current = ""
            parts.append(char)
        else:
            current += char
    if current:
        parts.append(current)
    return parts
