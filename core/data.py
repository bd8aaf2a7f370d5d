"""Corpora: where training text comes from, and how it becomes batches of token ids.

Holds the named corpora (downloaded once, sha256-checked, cached in a data directory), reading a local
text file or uploaded bytes with clear errors, tokenizing a corpus once into uint16/uint32 memmaps with
a train/val split (cached by corpus and tokenizer), and drawing random (x, y) batches with a seeded
numpy Generator.

Deliberately not here: torch (batches are numpy; the trainer moves them to its device), tokenizer
training (`core.tokenizer`), anything about models.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from core.checks import PlaygroundError
from core.files import write_atomic
from core.tokenizer import Tokenizer

# Where corpora and tokenized datasets are cached unless a caller names a directory. An environment
# variable (not a global config object) so CI and tests can point at a pre-filled directory.
DATA_DIR_ENV = "LLM_PLAYGROUND_DATA"
DEFAULT_DATA_DIR = Path.home() / ".cache" / "llm-playground" / "data"

# Largest text a user may hand us in one piece; larger corpora belong in a local file on a local run.
MAX_UPLOAD_BYTES = 50 * 1024 * 1024


@dataclass(frozen=True)
class NamedCorpus:
    name: str
    url: str
    sha256: str
    filename: str
    description: str


CORPORA = {
    "tinyshakespeare": NamedCorpus(
        name="tinyshakespeare",
        url="https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt",
        sha256="86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed",
        filename="tinyshakespeare.txt",
        description="40,000 lines of Shakespeare's plays (1.1 MB), the classic char-level corpus",
    ),
}


class CorpusError(PlaygroundError):
    """A corpus cannot be used; the message names the problem and what to change."""


@dataclass(frozen=True)
class Corpus:
    """A text ready to tokenize, with where it came from."""

    text: str
    sha256: str      # of its UTF-8 bytes: identifies the data a model was trained on
    source: str      # a corpus name, a path or an upload's file name

    @property
    def n_bytes(self) -> int:
        return len(self.text.encode("utf-8"))


def data_dir(directory: str | os.PathLike | None = None) -> Path:
    """The data directory: the argument, else $LLM_PLAYGROUND_DATA, else ~/.cache/llm-playground/data."""
    return Path(directory or os.environ.get(DATA_DIR_ENV) or DEFAULT_DATA_DIR)


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def decode_corpus_bytes(data: bytes, source: str, max_bytes: int | None = None) -> Corpus:
    """Validate raw bytes as a text corpus: non-empty, within the size limit, UTF-8, not binary."""
    if max_bytes is not None and len(data) > max_bytes:
        raise CorpusError(f"{source} is {len(data):,} bytes, over the {max_bytes:,}-byte limit; "
                          f"use a smaller file (or a local path on a local run)")
    if not data.strip():
        raise CorpusError(f"{source} is empty (or only whitespace); give a text with content")
    if b"\x00" in data:
        raise CorpusError(f"{source} contains NUL bytes: it looks like a binary file, not text; "
                          f"give a UTF-8 .txt file")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise CorpusError(f"{source} is not UTF-8 text (bad byte 0x{data[e.start]:02x} at offset "
                          f"{e.start}); save it as UTF-8 and try again") from e
    return Corpus(text=text, sha256=sha256_bytes(data), source=source)


def read_text_file(path: str | os.PathLike, max_bytes: int | None = None) -> Corpus:
    p = Path(path)
    if not p.is_file():
        raise CorpusError(f"no such file: {p}")
    return decode_corpus_bytes(p.read_bytes(), str(p), max_bytes)


def corpus_from_upload(data: bytes, filename: str, max_bytes: int = MAX_UPLOAD_BYTES) -> Corpus:
    if not filename.lower().endswith((".txt", ".md", ".text")):
        raise CorpusError(f"{filename!r} is not a text file; upload a .txt (or .md) file")
    return decode_corpus_bytes(data, filename, max_bytes)


def fetch_corpus(name: str, directory: str | os.PathLike | None = None) -> Corpus:
    """A named corpus: from the data directory if there with the right sha256, else downloaded there.

    The download goes to a temporary file and is renamed only once its sha256 matches, so a failed or
    tampered download never leaves a file that a later call would trust.
    """
    if name not in CORPORA:
        raise CorpusError(f"unknown corpus {name!r}; named corpora: {', '.join(CORPORA)}")
    spec = CORPORA[name]
    d = data_dir(directory)
    path = d / spec.filename
    if path.is_file():
        data = path.read_bytes()
        if sha256_bytes(data) == spec.sha256:
            return decode_corpus_bytes(data, name)
        raise CorpusError(f"{path} exists but its sha256 is not {spec.name}'s ({spec.sha256[:12]}…): "
                          f"it is damaged or another file; delete it to download again")
    d.mkdir(parents=True, exist_ok=True)
    try:
        with urllib.request.urlopen(spec.url, timeout=60) as r:
            data = r.read()
    except OSError as e:
        raise CorpusError(f"could not download {name} from {spec.url} ({e}); check the network, or "
                          f"put {spec.filename} in {d} (or set ${DATA_DIR_ENV})") from e
    got = sha256_bytes(data)
    if got != spec.sha256:
        raise CorpusError(f"downloaded {name} has sha256 {got[:12]}…, expected {spec.sha256[:12]}…: "
                          f"the file at {spec.url} changed or the download was altered; not used")
    write_atomic(path, data)
    return decode_corpus_bytes(data, name)


def load_corpus(source: str, directory: str | os.PathLike | None = None) -> Corpus:
    """A corpus by name (see CORPORA) or by local path."""
    if source in CORPORA:
        return fetch_corpus(source, directory)
    return read_text_file(source)


# ---------------------------------------------------------------------------------------------------
# Tokenized datasets


@dataclass
class TokenDataset:
    """A corpus tokenized once: train and val token arrays (memmaps) plus what describes them."""

    train: np.ndarray
    val: np.ndarray
    meta: dict           # corpus sha256, tokenizer, counts, bytes per token of each split
    directory: Path

    @property
    def val_bytes_per_token(self) -> float:
        return self.meta["val_bytes"] / self.meta["val_tokens"]

    def split(self, name: str) -> np.ndarray:
        if name not in ("train", "val"):
            raise ValueError(f"split must be 'train' or 'val', got {name!r}")
        return self.train if name == "train" else self.val

    def check_block_size(self, block_size: int) -> None:
        for name in ("train", "val"):
            n = len(self.split(name))
            if n < block_size + 1:
                raise CorpusError(
                    f"the {name} split has {n} tokens, too short for a context of {block_size} "
                    f"(it needs at least {block_size + 1}); use a longer corpus or a smaller block_size")

    def get_batch(self, split: str, batch_size: int, block_size: int,
                  rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """Random windows: x (B, T) and y (B, T) = x shifted left by one, as int64."""
        data = self.split(split)
        starts = rng.integers(0, len(data) - block_size, size=batch_size)
        idx = starts[:, None] + np.arange(block_size + 1)[None, :]   # (B, T+1)
        window = data[idx].astype(np.int64)
        # contiguous copies: strided index tensors slow the embedding backward and the loss
        return np.ascontiguousarray(window[:, :-1]), np.ascontiguousarray(window[:, 1:])


def token_dtype(n_vocab: int) -> type:
    return np.uint16 if n_vocab <= 2**16 else np.uint32


def prepare_dataset(corpus: Corpus, tokenizer: Tokenizer, directory: str | os.PathLike | None = None,
                    val_fraction: float = 0.1) -> TokenDataset:
    """Tokenize `corpus` into train.bin / val.bin, cached under the data directory by the corpus's
    sha256 and the tokenizer's identity, and open them as memmaps.

    The split is on the text: the first (1 - val_fraction) of the characters train, the rest validate
    (nanoGPT's split for tiny shakespeare, so val losses compare with its figures).
    """
    if not 0.0 < val_fraction < 1.0:
        raise CorpusError(f"val_fraction must be in (0, 1), got {val_fraction}")
    key = sha256_bytes(json.dumps([corpus.sha256, tokenizer.name, tokenizer.kind, tokenizer.n_vocab,
                                   tokenizer.meta.get("corpus_sha256"), tokenizer.meta.get("vocab_size"),
                                   _ranks_digest(tokenizer), val_fraction]).encode())[:16]
    # the name is only a readable prefix; a saved tokenizer's name could hold path separators
    slug = re.sub(r"[^A-Za-z0-9_.-]", "_", tokenizer.name)[:40].lstrip(".") or "tok"
    out = data_dir(directory) / "tokenized" / f"{slug}-{key}"
    meta_path = out / "meta.json"
    dtype = token_dtype(tokenizer.n_vocab)
    if not meta_path.is_file():
        n_split = int(len(corpus.text) * (1 - val_fraction))
        parts = {"train": corpus.text[:n_split], "val": corpus.text[n_split:]}
        out.mkdir(parents=True, exist_ok=True)
        meta = {"corpus_sha256": corpus.sha256, "source": corpus.source, "tokenizer": tokenizer.name,
                "tokenizer_kind": tokenizer.kind, "n_vocab": tokenizer.n_vocab,
                "dtype": np.dtype(dtype).name, "val_fraction": val_fraction}
        for name, text in parts.items():
            ids = _encode_long(tokenizer, text)
            write_atomic(out / f"{name}.bin", np.asarray(ids, dtype=dtype).tobytes())
            meta[f"{name}_tokens"] = len(ids)
            meta[f"{name}_bytes"] = len(text.encode("utf-8"))
        # meta.json last: its presence means both .bin files are complete.
        write_atomic(meta_path, json.dumps(meta, indent=2).encode())
    meta = json.loads(meta_path.read_text())
    arrays = {}
    for name in ("train", "val"):
        if meta[f"{name}_tokens"] == 0:
            arrays[name] = np.zeros(0, dtype=dtype)
        else:
            arrays[name] = np.memmap(out / f"{name}.bin", dtype=dtype, mode="r")
    return TokenDataset(arrays["train"], arrays["val"], meta, out)


def _encode_long(tokenizer: Tokenizer, text: str, chunk_chars: int = 1 << 16) -> list[int]:
    """Encode a long text in chunks so tiktoken's threads can share the work, giving exactly the ids
    of encoding it whole: chunks are cut right after a newline that is followed by a non-space
    character, a boundary no piece of the GPT-4 split pattern crosses."""
    chunks, start = [], 0
    while start < len(text):
        end = min(start + chunk_chars, len(text))
        while start < end < len(text) and not (text[end - 1] == "\n" and not text[end].isspace()):
            end -= 1
        if end == start:  # no safe cut in this window (one huge line): take the rest whole
            end = len(text)
        chunks.append(text[start:end])
        start = end
    ids: list[int] = []
    for part in tokenizer.encode_batch(chunks):
        ids.extend(part)
    return ids


def _ranks_digest(tokenizer: Tokenizer) -> str | None:
    if tokenizer.kind != "bpe":
        return None
    ranks = tokenizer._mergeable_ranks()
    return sha256_bytes(b"".join(k + b"\0" for k, _ in sorted(ranks.items(), key=lambda kv: kv[1])))
