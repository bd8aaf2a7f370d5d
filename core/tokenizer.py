"""Tokenizers: text <-> token ids, and the views a teaching tool needs of that mapping.

Holds one `Tokenizer` type wrapping a `tiktoken.Encoding`, whatever its origin:
  - byte:   256 single-byte tokens, no merges (the character-level tokenizer on ASCII text);
  - bpe:    GPT-4-style byte-level BPE trained on a corpus with rustbpe, saved in tiktoken's own
            file format plus a small JSON;
  - openai: tiktoken's published encodings by name (gpt2, cl100k_base, ...) when they can be loaded.
Every tokenizer has `<|endoftext|>` as its one special token, placed right after the ordinary ones.

Also: token spans for display (partial UTF-8 shown honestly), bytes-per-token compression, and a
step-by-step replay of the BPE merges of one piece of text (what tiktoken does, shown).

Deliberately not here: torch (this module is on the inference side), corpora and their caching
(`core.data`), models.
"""

from __future__ import annotations

import base64
import codecs
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import regex
import tiktoken

from core.checks import PlaygroundError
from core.files import write_atomic

EOT = "<|endoftext|>"

# GPT-4's split pattern (cl100k_base): contractions, letters, 1-3 digit runs, punctuation, whitespace.
# BPE merges never cross the boundaries this pattern draws.
GPT4_SPLIT_PATTERN = (
    r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]++[\r\n]*|\s*[\r\n]|\s+(?!\S)|\s+"""
)

OPENAI_ENCODINGS = ("gpt2", "r50k_base", "p50k_base", "cl100k_base", "o200k_base")

# Vocabulary sizes a trained BPE may have (ordinary tokens, the 256 bytes included). Below 257 there
# is nothing to merge; above 2**16 the token files would need uint32 and the model's embedding alone
# would dwarf the small models this playground trains.
MIN_BPE_VOCAB = 257
MAX_BPE_VOCAB = 65_535

RANKS_FILE = "tokenizer.tiktoken"
META_FILE = "tokenizer.json"


class TokenizerError(PlaygroundError):
    """A tokenizer cannot be built, loaded or applied as asked; the message says what to change."""


def readable(data: bytes) -> str:
    """Bytes as a person should see them: UTF-8 where it decodes, and each byte that does not (part of a
    character split across tokens or merges) as `\\xNN`, never as U+FFFD, which would hide which bytes
    they are. Every page shows a token's or a merge's bytes through this."""
    return data.decode("utf-8", errors="backslashreplace")


@dataclass(frozen=True)
class TokenSpan:
    """One token of an encoded text, as a page shows it."""

    index: int          # position in the token sequence
    id: int
    raw: bytes          # the token's bytes
    text: str           # the bytes decoded on their own; partial UTF-8 becomes U+FFFD
    is_partial: bool    # True when the bytes are not valid UTF-8 by themselves (a split character)
    byte_start: int     # offsets into the UTF-8 bytes of the encoded text
    byte_end: int
    char_start: int     # characters of the text this token's bytes touch (a split character
    char_end: int       # counts for every token that holds one of its bytes)
    is_special: bool


class Tokenizer:
    """A tiktoken Encoding with the metadata the playground needs to save, load and describe it."""

    def __init__(self, encoding: tiktoken.Encoding, kind: str, meta: dict | None = None):
        self.encoding = encoding
        self.kind = kind              # "byte" | "bpe" | "openai"
        self.meta = dict(meta or {})  # pattern, corpus sha256, ... (saved to tokenizer.json)

    # -- identity ----------------------------------------------------------------------------------
    @property
    def name(self) -> str:
        return self.encoding.name

    @property
    def n_vocab(self) -> int:
        """Number of token ids, special ones included: the model's vocab_size."""
        return self.encoding.n_vocab

    @property
    def eot_id(self) -> int:
        return self.encoding.eot_token

    def __repr__(self) -> str:
        return f"Tokenizer(name={self.name!r}, kind={self.kind!r}, n_vocab={self.n_vocab})"

    # -- encode / decode -----------------------------------------------------------------------------
    def encode(self, text: str, allow_special: bool = False) -> list[int]:
        """Token ids of `text`.

        By default special-token strings typed in the text (`<|endoftext|>`) are encoded as plain
        text, never as the special token and never as an error: a user's text is data. Pass
        `allow_special=True` where the text is our own (documents joined with EOT).
        Lone surrogates cannot be UTF-8 encoded; they become U+FFFD, as tiktoken does.
        """
        if not isinstance(text, str):
            raise TokenizerError(f"text to encode must be a str, got {type(text).__name__}")
        if allow_special:
            return self.encoding.encode(text, allowed_special="all")
        return self.encoding.encode(text, disallowed_special=())

    def encode_batch(self, texts: list[str], allow_special: bool = False) -> list[list[int]]:
        """Encode many texts using tiktoken's threads (for corpora)."""
        if allow_special:
            return self.encoding.encode_batch(texts, allowed_special="all")
        return self.encoding.encode_batch(texts, disallowed_special=())

    def check_ids(self, ids: Iterable[int]) -> list[int]:
        """Return ids as a list of ints, or raise naming the first id outside [0, n_vocab)."""
        out = []
        for i, t in enumerate(ids):
            t = int(t)
            if not 0 <= t < self.n_vocab:
                raise TokenizerError(
                    f"token id {t} at position {i} is out of range for {self.name} "
                    f"(valid ids are 0..{self.n_vocab - 1})")
            out.append(t)
        return out

    def decode(self, ids: Iterable[int]) -> str:
        """Text of `ids`; bytes that do not form valid UTF-8 (a cut-off character) become U+FFFD."""
        return self.encoding.decode(self.check_ids(ids), errors="replace")

    def decode_bytes(self, ids: Iterable[int]) -> bytes:
        return self.encoding.decode_bytes(self.check_ids(ids))

    def token_bytes(self, token_id: int) -> bytes:
        return self.encoding.decode_single_token_bytes(self.check_ids([token_id])[0])

    # -- views for display -------------------------------------------------------------------------
    def spans(self, text: str, allow_special: bool = False) -> list[TokenSpan]:
        """Every token of `text` with its bytes, honest text and offsets (for coloured token views)."""
        ids = self.encode(text, allow_special=allow_special)
        return self.spans_of_ids(ids)

    def spans_of_ids(self, ids: list[int]) -> list[TokenSpan]:
        ids = self.check_ids(ids)
        raws = [self.encoding.decode_single_token_bytes(t) for t in ids]
        data = b"".join(raws)
        # char index of every byte: a byte belongs to the character whose UTF-8 sequence holds it.
        # Invalid sequences decode one U+FFFD per bad byte run, which this per-byte walk mirrors.
        char_of_byte = _char_index_of_bytes(data)
        specials = self.encoding.special_tokens_set
        spans, pos = [], 0
        for index, (tid, raw) in enumerate(zip(ids, raws)):
            start, end = pos, pos + len(raw)
            pos = end
            try:
                text, partial = raw.decode("utf-8"), False
            except UnicodeDecodeError:
                text, partial = raw.decode("utf-8", errors="replace"), True
            c0 = char_of_byte[start] if start < len(data) else len(char_of_byte)
            c1 = (char_of_byte[end - 1] + 1) if end > start else c0
            spans.append(TokenSpan(index, tid, raw, text, partial, start, end, c0, c1,
                                   text in specials))
        return spans

    def bytes_per_token(self, text: str) -> float:
        """Compression: UTF-8 bytes of `text` per token (higher packs more text into a context)."""
        ids = self.encode(text)
        if not ids:
            return 0.0
        return len(text.encode("utf-8", errors="replace")) / len(ids)

    def split_pieces(self, text: str) -> list[str]:
        """The pre-tokenization pieces of `text`: merges happen only inside one piece."""
        return regex.findall(self.encoding._pat_str, text)

    def replay_merges(self, piece: str) -> list[list[bytes]]:
        """The byte-pair merges of one piece, step by step, as tiktoken applies them.

        Starts from single bytes; at each step the adjacent pair whose concatenation has the lowest
        rank (the earliest learned merge) is merged. Returns every intermediate list of parts, the
        first being single bytes and the last the final tokens. (minGPT's bpe.py shows its work the
        same way; tiktoken does exactly this in Rust.)
        """
        ranks = self._mergeable_ranks()
        parts = [bytes([b]) for b in piece.encode("utf-8", errors="replace")]
        steps = [list(parts)]
        while len(parts) > 1:
            best_i, best_rank = None, None
            for i in range(len(parts) - 1):
                rank = ranks.get(parts[i] + parts[i + 1])
                if rank is not None and (best_rank is None or rank < best_rank):
                    best_i, best_rank = i, rank
            if best_i is None:
                break
            parts = parts[:best_i] + [parts[best_i] + parts[best_i + 1]] + parts[best_i + 2:]
            steps.append(list(parts))
        return steps

    def _mergeable_ranks(self) -> dict[bytes, int]:
        return self.encoding._mergeable_ranks

    # -- persistence ---------------------------------------------------------------------------------
    def save(self, directory: str | os.PathLike) -> Path:
        """Write tokenizer.tiktoken (tiktoken's format) and tokenizer.json into `directory`."""
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        meta = {
            "name": self.name,
            "kind": self.kind,
            "pattern": self.encoding._pat_str,
            "special_tokens": self.encoding._special_tokens,
            "n_vocab": self.n_vocab,
            **{k: v for k, v in self.meta.items() if k not in ("pattern",)},
        }
        if self.kind == "bpe":
            lines = [f"{base64.b64encode(tok).decode()} {rank}\n"
                     for tok, rank in sorted(self._mergeable_ranks().items(), key=lambda kv: kv[1])]
            write_atomic(d / RANKS_FILE, "".join(lines).encode())
            meta["ranks_sha256"] = hashlib.sha256((d / RANKS_FILE).read_bytes()).hexdigest()
        write_atomic(d / META_FILE, json.dumps(meta, indent=2).encode())
        return d


def char_frequencies(text: str, top: int = 40) -> list[tuple[str, int]]:
    """The most common characters of `text` with their counts: a few characters make most of a text,
    and frequent pairs of them are what BPE merges first."""
    from collections import Counter
    return Counter(text).most_common(top)


def byte_tokenizer() -> Tokenizer:
    """256 single-byte tokens plus <|endoftext|> (id 256). No merges: every byte is one token."""
    enc = tiktoken.Encoding(
        name="byte",
        pat_str=GPT4_SPLIT_PATTERN,
        mergeable_ranks={bytes([i]): i for i in range(256)},
        special_tokens={EOT: 256},
    )
    return Tokenizer(enc, "byte", {"description": "256 single bytes + <|endoftext|>"})


def train_bpe(texts: Iterable[str], vocab_size: int, name: str = "bpe",
              pattern: str = GPT4_SPLIT_PATTERN, corpus_sha256: str | None = None) -> Tokenizer:
    """Train a byte-level BPE with rustbpe; `vocab_size` counts the 256 bytes and the merges.

    The returned tokenizer has vocab_size + 1 ids: <|endoftext|> is appended at id vocab_size.
    rustbpe is deterministic for the same texts and size.
    """
    if isinstance(vocab_size, bool) or not isinstance(vocab_size, int):
        raise TokenizerError(f"vocab_size must be an integer, got {vocab_size!r}")
    if not MIN_BPE_VOCAB <= vocab_size <= MAX_BPE_VOCAB:
        raise TokenizerError(
            f"vocab_size must be in [{MIN_BPE_VOCAB}, {MAX_BPE_VOCAB}] (256 bytes + at least one "
            f"merge), got {vocab_size}")
    try:
        import rustbpe  # training-only dependency, imported where used
    except ImportError:
        raise TokenizerError("training a BPE tokenizer needs rustbpe, which this installation (a hosted "
                             "demo) leaves out: pip install rustbpe") from None

    texts = list(texts)
    if not any(texts):
        raise TokenizerError("cannot train a BPE tokenizer on empty text")
    trainer = rustbpe.Tokenizer()
    trainer.train_from_iterator(iter(texts), vocab_size=vocab_size, pattern=pattern)
    ranks = {bytes(tok): rank for tok, rank in trainer.get_mergeable_ranks()}
    if len(ranks) < vocab_size:
        # A small corpus runs out of pairs to merge before reaching the asked size.
        raise TokenizerError(
            f"the corpus only supports {len(ranks)} tokens (it has too few distinct byte pairs); "
            f"choose vocab_size <= {len(ranks)} or a larger corpus")
    return _bpe_from_ranks(name, ranks, pattern,
                           {"vocab_size": vocab_size, "corpus_sha256": corpus_sha256,
                            "trainer": "rustbpe"})


def _bpe_from_ranks(name: str, ranks: dict[bytes, int], pattern: str, meta: dict) -> Tokenizer:
    enc = tiktoken.Encoding(name=name, pat_str=pattern, mergeable_ranks=ranks,
                            special_tokens={EOT: len(ranks)})
    return Tokenizer(enc, "bpe", meta)


def openai_tokenizer(name: str) -> Tokenizer:
    """One of tiktoken's published encodings; raises TokenizerError with the reason when it cannot
    be loaded (tiktoken downloads its files on first use, so offline machines need a cache)."""
    if name not in OPENAI_ENCODINGS:
        raise TokenizerError(f"unknown OpenAI encoding {name!r}; choose one of {', '.join(OPENAI_ENCODINGS)}")
    try:
        enc = tiktoken.get_encoding(name)
    except Exception as e:  # network errors come as several types (ConnectionError, HTTPError, ...)
        raise TokenizerError(
            f"the OpenAI encoding {name!r} is not available: tiktoken could not fetch its file "
            f"({type(e).__name__}). It needs the network once; or put the cached file in "
            f"$TIKTOKEN_CACHE_DIR.") from e
    return Tokenizer(enc, "openai", {"source": "tiktoken"})


def load_tokenizer(directory: str | os.PathLike) -> Tokenizer:
    """Load a tokenizer saved by `Tokenizer.save`. Reads only files inside `directory`."""
    d = Path(directory)
    meta_path = d / META_FILE
    if not meta_path.is_file():
        raise TokenizerError(f"no {META_FILE} in {d}: not a saved tokenizer directory")
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        kind = meta["kind"]
    except (ValueError, KeyError) as e:
        raise TokenizerError(f"{meta_path} is not a valid tokenizer description ({e})") from e
    if kind == "byte":
        return byte_tokenizer()
    if kind == "openai":
        return openai_tokenizer(meta["name"])
    if kind != "bpe":
        raise TokenizerError(f"{meta_path}: unknown tokenizer kind {kind!r}")
    ranks_path = d / RANKS_FILE
    if not ranks_path.is_file():
        raise TokenizerError(f"{d} describes a BPE tokenizer but has no {RANKS_FILE}")
    data = ranks_path.read_bytes()
    if meta.get("ranks_sha256") and hashlib.sha256(data).hexdigest() != meta["ranks_sha256"]:
        raise TokenizerError(f"{ranks_path} does not match the sha256 in {META_FILE}: the file is "
                             f"damaged or was replaced; re-export the tokenizer")
    try:
        ranks = {}
        for line in data.splitlines():
            if line:
                tok, rank = line.split()
                ranks[base64.b64decode(tok)] = int(rank)
    except ValueError as e:
        raise TokenizerError(f"{ranks_path} is not in tiktoken's format ({e})") from e
    extra = {k: v for k, v in meta.items()
             if k not in ("name", "kind", "pattern", "special_tokens", "n_vocab", "ranks_sha256")}
    return _bpe_from_ranks(meta["name"], ranks, meta["pattern"], extra)


def _char_index_of_bytes(data: bytes) -> list[int]:
    """For each byte of `data`, the index of the character of data.decode(errors="replace") that
    holds it. Python emits one U+FFFD per maximal invalid subpart; the error handler tells us where
    those are, so the mapping is exact."""
    bad: dict[int, int] = {}

    def record(exc: UnicodeDecodeError):
        bad[exc.start] = exc.end
        return "\ufffd", exc.end

    codecs.register_error("llmpg-record", record)
    data.decode("utf-8", errors="llmpg-record")
    out, char, i = [], 0, 0
    while i < len(data):
        if i in bad:
            length = bad[i] - i
        else:
            b = data[i]
            length = 1 if b < 0x80 else 2 if b < 0xE0 else 3 if b < 0xF0 else 4
        out.extend([char] * length)
        char += 1
        i += length
    return out
