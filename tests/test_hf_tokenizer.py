"""A checkpoint's own tokenizer, read offline: `core.tokenizer.tokenizer_from_checkpoint` against the peer,
transformers' fast tokenizer loaded from the same folder (`AutoTokenizer.from_pretrained`).

Five checkpoint folders are built here from tokenizers trained on generated text, each written by
transformers' `save_pretrained` (or, for GPT-2's two files, by `tokenizers`' `save_model`) exactly as a
downloaded checkpoint holds them:
  gpt2-files   GPT-2's vocab.json + merges.txt                    -> tiktoken (kind "pretrained")
  gpt2-json    the same tokenizer as a tokenizer.json (GPT2Tokenizer) -> tiktoken
  llama3       a Split pre-tokenizer (Llama 3's regex), ignore_merges -> tiktoken
  spm          SentencePiece-style BPE, byte fallback (LlamaTokenizer) -> tokenizers (kind "hf")
  qwen2-nfc    byte-level BPE behind an NFC normalizer (Qwen2Tokenizer) -> tokenizers
On 10,000 generated strings each (seeded: ASCII, whitespace runs, tabs/newlines, emoji with skin tones and
ZWJ sequences, flags, CJK, RTL, combining characters, code points from all of Unicode, special tokens typed
as text) our ids equal the peer's and our decode equals the peer's.

Special tokens typed as text: the project's rule is that text never becomes a special id unless asked.
The peer's `add_special_tokens=False` only drops BOS/EOS templates; it still turns "<|endoftext|>" typed
in the text into the special id. So the default `encode` is compared with the peer's
`split_special_tokens=True` (special tokens left as text), and `encode(allow_special=True)` with the
peer's default. transformers 5 never applies `clean_up_tokenization_spaces` to BPE tokenizers, so decode
is compared as is.
"""

from __future__ import annotations

import itertools
import json
import os
import random
import unicodedata

os.environ.setdefault("RAYON_NUM_THREADS", "1")   # tokenizers' thread pool: one thread, as the rest of the suite

import numpy as np
import pytest
import tiktoken
import tokenizers
import transformers      # the peer is a pinned test requirement: its absence is a failure, not a skip
from tokenizers import AddedToken, Regex, decoders, models, normalizers, pre_tokenizers, processors, trainers

from core.tokenizer import (BYTE_TO_CHAR, EOT, HF_FILE, META_FILE, HFTokenizer, TiktokenTokenizer, TokenizerError,
                            load_tokenizer, tokenizer_from_checkpoint)

N_STRINGS = 10_000

# -- generated text ------------------------------------------------------------------------------------
WORDS = ["the", "The", "THE", "cat", "sat", "on", "mat", "hello", "world", "don't", "we'll", "I'M", "they're",
         "it's", "You'VE", "HTTP", "x", "a", "Zürich", "naïve", "café", "über", "Ελληνικά", "русский",
         "ﬁnance", "Ω", "Å", "ǅ", "ß"]
SPACES = [" ", "  ", "   ", "    ", "\t", "\t\t", "\n", "\n\n", "\r\n", " \n", "\n ", " \t ", "\u00a0", "\u3000",
          "\u2009", "\u200b", "\x0b", "\x0c", "\x85", "\u2028", "\u1680", "\u202f"]
EMOJI = ["😀", "👍", "👍🏽", "👨‍👩‍👧‍👦", "🧑🏿‍💻", "🏳️‍🌈", "❤️", "🇯🇵", "🇺🇳", "🫨", "🐈‍⬛", "👩🏻‍❤️‍💋‍👨🏼", "✊🏾"]
CJK = ["中文字符", "汉字", "日本語のテキスト", "カタカナ", "한국어", "한", "𠀀𠀁", "𱍐", "。、", "「引用」", "ｆｕｌｌ"]
RTL = ["עברית", "שָׁלוֹם", "العربية", "مَرْحَبًا", "فارسی", "\u200f", "\u202e", "ܐܪܡܝܐ"]
COMBINING = ["e\u0301", "a\u0308", "n\u0303", "A\u030a", "\u1100\u1161", "\u2126", "o\u0302\u0323",
             "\u0915\u094d\u0937", "Z\u0351\u036b\u0343\u036a", "\u00c5", "\u212b", "\u1e9b\u0323"]
SPECIAL_TEXT = [EOT, "<|endoftext|", "|endoftext|>", "<s>", "</s>", "<unk>", "<|im_start|>", "<|im_end|>",
                "<0xE4>", "▁", "▁▁", "Ġ", "Ċ", "<pad>"]
PUNCT = list("!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~") + ["...", "—", "–", "«»", "¿", "…", "''", "'s", "'ll"]


def _random_char(rng: random.Random) -> str:
    c = rng.randrange(0x20, 0x110000)
    return chr(c) if not 0xD800 <= c <= 0xDFFF else "?"


def make_strings(n: int, seed: int) -> list[str]:
    """n strings of 1-10 segments drawn from every pool above, plus digits, random ASCII and random code
    points; seeded, so every run checks the same strings."""
    rng = random.Random(seed)
    pools = [WORDS, SPACES, EMOJI, CJK, RTL, COMBINING, SPECIAL_TEXT, PUNCT]
    out = []
    for _ in range(n):
        parts = []
        for _ in range(rng.randint(1, 10)):
            r = rng.random()
            if r < 0.70:
                parts.append(rng.choice(rng.choice(pools)))
            elif r < 0.80:
                parts.append(str(rng.randrange(10 ** rng.randint(1, 7))))
            elif r < 0.90:
                parts.append("".join(chr(rng.randrange(32, 127)) for _ in range(rng.randint(1, 6))))
            else:
                parts.append("".join(_random_char(rng) for _ in range(rng.randint(1, 3))))
            if rng.random() < 0.4:
                parts.append(rng.choice([" ", " ", " ", "\n", "\t", "  "]))
        out.append("".join(parts))
    return out


STRINGS = make_strings(N_STRINGS, seed=1234)
CORPUS = make_strings(6_000, seed=99) * 2


# -- checkpoint folders --------------------------------------------------------------------------------
def _bytelevel_bpe(pre: pre_tokenizers.PreTokenizer, vocab_size: int, normalizer=None, specials=(EOT,),
                   ignore_merges: bool = False) -> tokenizers.Tokenizer:
    """Byte-level BPE trained on the corpus, special tokens appended after the ordinary ones (GPT-2's
    layout: <|endoftext|> is the last id)."""
    tk = tokenizers.Tokenizer(models.BPE(ignore_merges=ignore_merges))
    tk.normalizer = normalizer
    tk.pre_tokenizer = pre
    tk.decoder = decoders.ByteLevel()
    tk.train_from_iterator(CORPUS, trainers.BpeTrainer(vocab_size=vocab_size, show_progress=False,
                                                       initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tk.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in specials])
    return tk


@pytest.fixture(scope="module")
def gpt2_tk():
    return _bytelevel_bpe(pre_tokenizers.ByteLevel(add_prefix_space=False), 1500)


@pytest.fixture(scope="module")
def folders(tmp_path_factory, gpt2_tk) -> dict:
    root = tmp_path_factory.mktemp("checkpoints")
    out = {}

    # one GPT-2-style tokenizer twice: as a tokenizer.json, and as GPT-2's vocab.json + merges.txt
    d = root / "gpt2-json"
    transformers.GPT2TokenizerFast(tokenizer_object=gpt2_tk, eos_token=EOT, bos_token=EOT,
                                   unk_token=EOT).save_pretrained(d)
    out["gpt2-json"] = d
    d = root / "gpt2-files"
    d.mkdir()
    gpt2_tk.model.save(str(d))                                 # vocab.json + merges.txt (model vocab)
    vocab = json.loads((d / "vocab.json").read_text())
    vocab[EOT] = gpt2_tk.token_to_id(EOT)                      # GPT-2's vocab.json holds <|endoftext|>
    (d / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False))
    # as GPT-2's own repository: its tokenizer_config.json names no token; the class's defaults do
    (d / "tokenizer_config.json").write_text(json.dumps({"model_max_length": 1024}))
    (d / "config.json").write_text(json.dumps({"model_type": "gpt2", "vocab_size": len(vocab),
                                               "eos_token_id": vocab[EOT], "bos_token_id": vocab[EOT]}))
    out["gpt2-files"] = d

    # Llama 3's shape: a Split with the cl100k regex before a regex-free ByteLevel; whole pieces in the
    # vocabulary are taken as they are (ignore_merges)
    llama3_regex = (r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+"""
                    r"""[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+""")
    tk = _bytelevel_bpe(pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(llama3_regex), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)]), 1200,
        specials=("<|begin_of_text|>", "<|end_of_text|>"), ignore_merges=True)
    d = root / "llama3"
    transformers.PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="<|begin_of_text|>",
                                         eos_token="<|end_of_text|>").save_pretrained(d)
    out["llama3"] = d

    # Qwen2's shape: NFC, its Split regex, byte-level BPE, chat tokens appended; embedding padded
    from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX
    tk = _bytelevel_bpe(pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)]), 1200, normalizer=normalizers.NFC(),
        specials=(EOT, "<|im_start|>", "<|im_end|>"))
    # added tokens that are not special (matched before BPE, as Qwen2's "<tool_call>"); one of spaces,
    # which the ByteLevel decoder gives back as its own UTF-8
    tk.add_tokens([AddedToken("<tool_call>", special=False), AddedToken("    ", special=False)])
    d = root / "qwen2-nfc"
    transformers.Qwen2Tokenizer(tokenizer_object=tk, eos_token="<|im_end|>", pad_token=EOT,
                                unk_token=None).save_pretrained(d)
    (d / "config.json").write_text(json.dumps({"model_type": "qwen2", "vocab_size": 2048}))
    out["qwen2-nfc"] = d

    out["spm"] = _spm_folder(root / "spm")
    return out


def _spm_folder(d) -> object:
    """Llama 2's shape: <unk> <s> </s>, the 256 byte tokens <0x00>..<0xFF>, then SentencePiece-style
    pieces ("▁" for a space, prepended to the text); characters outside the vocabulary fall back to
    their bytes. Trained with a small alphabet so that the fallback happens often."""
    trainer_tk = tokenizers.Tokenizer(models.BPE())
    trainer_tk.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first", split=True)
    trainer_tk.train_from_iterator(CORPUS, trainers.BpeTrainer(vocab_size=1200, limit_alphabet=120,
                                                               show_progress=False))
    trained = json.loads(trainer_tk.to_str())["model"]
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2}
    vocab.update({f"<0x{b:02X}>": 3 + b for b in range(256)})
    # the corpus types "</s>" and "<0xE4>" as text, so training learned pieces spelled like the control and
    # byte tokens; SentencePiece never merges into those, so neither may these merges (nor build on them)
    dropped = set(vocab)
    merges = []
    for m in trained["merges"]:
        a, b = m if isinstance(m, list) else m.split(" ")
        if a in dropped or b in dropped or a + b in dropped:
            dropped.add(a + b)
        else:
            merges.append((a, b))
    for tok, _ in sorted(trained["vocab"].items(), key=lambda kv: kv[1]):
        if tok not in dropped:
            vocab[tok] = len(vocab)
    tk = tokenizers.Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token="<unk>", fuse_unk=True,
                                        byte_fallback=True))
    tk.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first", split=False)
    tk.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                    decoders.Strip(" ", 1, 0)])
    tk.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in ("<unk>", "<s>", "</s>")])
    tk.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B",
                                                      special_tokens=[("<s>", 1)])
    transformers.LlamaTokenizerFast(tokenizer_object=tk, bos_token="<s>", eos_token="</s>",
                                    unk_token="<unk>").save_pretrained(d)
    return d


EXPECTED_BACKEND = {"gpt2-files": "pretrained", "gpt2-json": "pretrained", "llama3": "pretrained",
                    "spm": "hf", "qwen2-nfc": "hf"}


@pytest.fixture(scope="module")
def loaded(folders) -> dict:
    """name -> (ours, the peer), both read from the same folder."""
    return {name: (tokenizer_from_checkpoint(d), transformers.AutoTokenizer.from_pretrained(d))
            for name, d in folders.items()}


def _expected_bytes(name: str, text: str) -> bytes:
    """The bytes the tokens of `text` must concatenate to: the text's UTF-8, after the normalizer (NFC)
    or, SentencePiece-style, with every space (and "▁") as a space and one prepended when the text does
    not start with one."""
    if name == "qwen2-nfc":
        return unicodedata.normalize("NFC", text).encode()
    if name == "spm":
        t = text.replace("▁", " ")
        return ((" " if t and not t.startswith(" ") else "") + t).encode()
    return text.encode()


# -- the checks ------------------------------------------------------------------------------------------
def test_each_checkpoint_gets_the_backend_that_is_exact(loaded):
    for name, (ours, peer) in loaded.items():
        assert ours.kind == EXPECTED_BACKEND[name], (name, ours.meta["backend_reason"])
        assert isinstance(ours, TiktokenTokenizer if ours.kind == "pretrained" else HFTokenizer)
        assert ours.n_vocab == len(peer), name
    assert "normalizer" in loaded["qwen2-nfc"][0].meta["backend_reason"]
    assert "SentencePiece" in loaded["spm"][0].meta["backend_reason"]
    # GPT-2's two files and its tokenizer.json are the same tokenizer: the same tiktoken ranks
    a, b = loaded["gpt2-files"][0], loaded["gpt2-json"][0]
    assert a._mergeable_ranks() == b._mergeable_ranks() and a.encoding._special_tokens == b.encoding._special_tokens


def test_special_ids_come_from_the_configs(loaded):
    gpt2, peer = loaded["gpt2-files"]
    assert gpt2.eot_id == peer.eos_token_id == peer.convert_tokens_to_ids(EOT) and gpt2.bos_id == gpt2.eot_id
    spm, peer = loaded["spm"]
    assert (spm.eot_id, spm.bos_id) == (2, 1) == (peer.eos_token_id, peer.bos_token_id) and spm.add_bos
    qwen, peer = loaded["qwen2-nfc"]
    assert qwen.eot_id == peer.convert_tokens_to_ids("<|im_end|>") and qwen.bos_id is None and not qwen.add_bos
    llama3, peer = loaded["llama3"]
    assert (llama3.eot_id, llama3.bos_id) == (peer.eos_token_id, peer.bos_token_id)
    assert llama3.special_ids == {llama3.eot_id, llama3.bos_id}


@pytest.mark.parametrize("name", list(EXPECTED_BACKEND))
def test_ids_and_text_match_the_peer_on_10000_strings(name, loaded):
    ours, peer = loaded[name]
    theirs = peer(STRINGS, add_special_tokens=False, split_special_tokens=True)["input_ids"]
    mine = [ours.encode(s) for s in STRINGS]
    bad = [(s, m, t) for s, m, t in zip(STRINGS, mine, theirs) if m != t]
    assert not bad, f"{len(bad)} strings differ, e.g. {bad[0]}"
    assert ours.encode_batch(STRINGS) == theirs
    specials = ours.special_ids
    for s, ids in zip(STRINGS, mine):
        assert not specials & set(ids), s                       # typed special tokens stayed text
        text = ours.decode(ids)
        assert text == peer.decode(ids), s
        raw = ours.decode_bytes(ids)
        assert raw == b"".join(ours.token_bytes(t) for t in ids) == _expected_bytes(name, s), s
        if name.startswith(("gpt2", "llama3")):
            assert text == s
    # asked for, special tokens typed in our own text become their ids, as the peer does by default
    theirs = peer(STRINGS, add_special_tokens=False)["input_ids"]
    assert [ours.encode(s, allow_special=True) for s in STRINGS] == theirs
    assert ours.encode_batch(STRINGS, allow_special=True) == theirs


@pytest.mark.parametrize("name", list(EXPECTED_BACKEND))
def test_decode_of_any_ids_matches_the_peer(name, loaded):
    """Random id sequences, cut characters and byte-fallback runs included: the same text, U+FFFD where the
    bytes are not UTF-8."""
    ours, peer = loaded[name]
    rng = np.random.default_rng(5)
    for _ in range(2000):
        ids = rng.integers(0, ours.n_vocab, rng.integers(1, 9)).tolist()
        assert ours.decode(ids) == peer.decode(ids), ids


@pytest.mark.parametrize("name", list(EXPECTED_BACKEND))
def test_every_token_stands_for_the_bytes_the_peer_decodes(name, loaded):
    ours, peer = loaded[name]
    for t in range(ours.n_vocab):
        raw = ours.token_bytes(t)
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            continue        # a lone byte or a part of a character: its text is U+FFFD in either view
        if name == "spm" and text.startswith(" "):
            text = text[1:]  # SentencePiece's decoder strips the space it prepended, once per text
        assert peer.decode([t]) == text, (t, raw)


@pytest.mark.parametrize("name", list(EXPECTED_BACKEND))
def test_spans_cover_the_text_with_exact_offsets(name, loaded):
    ours, peer = loaded[name]
    for s in STRINGS[:1500]:
        spans = ours.spans(s)
        data = _expected_bytes(name, s)
        assert b"".join(sp.raw for sp in spans) == data
        assert [sp.byte_start for sp in spans] == [0] + [sp.byte_end for sp in spans[:-1]]
        shown = data.decode("utf-8", errors="replace")
        for sp in spans:
            assert data[sp.byte_start:sp.byte_end] == sp.raw
            if not sp.is_partial:
                assert shown[sp.char_start:sp.char_end] == sp.text
        if spans:
            assert spans[-1].char_end == len(shown) and spans[-1].byte_end == len(data)
        assert not any(sp.is_special for sp in spans)
    eos = peer.convert_ids_to_tokens(ours.eot_id)
    spans = ours.spans(f"x{eos}", allow_special=True)
    assert spans[-1].is_special and spans[-1].id == ours.eot_id and spans[-1].raw == eos.encode()


@pytest.mark.parametrize("name", list(EXPECTED_BACKEND))
def test_lone_surrogates_become_replacement_characters(name, loaded):
    ours, peer = loaded[name]
    ids = ours.encode("a\ud800b\U0001F600")
    assert ids == peer.encode("a\ufffdb\U0001F600", add_special_tokens=False)
    assert ours.encode_batch(["a\ud800b"]) == [ours.encode("a\ufffdb")]


def test_spm_byte_fallback_tokens_are_their_bytes(loaded):
    spm, peer = loaded["spm"]
    assert spm.token_bytes(3 + 0xE4) == b"\xe4" and spm.token_bytes(peer.convert_tokens_to_ids("▁the")) == b" the"
    rare = "\U0001F9EC"                                   # not in the small alphabet: its 4 bytes, as tokens
    ids = spm.encode(rare)
    assert [peer.convert_ids_to_tokens(i) for i in ids][-4:] == ["<0xF0>", "<0x9F>", "<0xA7>", "<0xAC>"]
    spans = spm.spans(rare)
    assert [s.is_partial for s in spans][-4:] == [True] * 4 and spm.decode(ids) == rare
    assert spm.bytes_per_token("a b") == 3 / len(spm.encode("a b"))


@pytest.mark.parametrize("name", list(EXPECTED_BACKEND))
def test_merge_replay_ends_in_the_real_tokens(name, loaded):
    ours, _ = loaded[name]
    assert ours.has_merges
    checked = 0
    for s in STRINGS[:400]:
        for piece in ours.split_pieces(s):
            steps = ours.replay_merges(piece)
            final = steps[-1]
            assert final == [ours.token_bytes(t) for t in ours.encode(piece)], (s, piece, steps)
            assert b"".join(steps[0]) == b"".join(final)
            checked += 1
    assert checked >= 400


def test_split_pieces_show_the_text_as_the_tokenizer_cuts_it(loaded):
    assert loaded["gpt2-json"][0].split_pieces("Hello, world's 1234") == ["Hello", ",", " world", "'s", " 1234"]
    assert loaded["llama3"][0].split_pieces("Hello, world's 1234") == ["Hello", ",", " world", "'s", " ",
                                                                       "123", "4"]
    assert loaded["qwen2-nfc"][0].split_pieces("Cafe\u0301 12") == ["Café", " ", "1", "2"]
    assert loaded["spm"][0].split_pieces("a b") == [" a b"]       # split=False: one piece, "▁" shown as space


@pytest.mark.parametrize("name", list(EXPECTED_BACKEND))
def test_save_and_load_round_trip(name, loaded, tmp_path):
    ours, _ = loaded[name]
    ours.save(tmp_path)
    again = load_tokenizer(tmp_path)
    assert (type(again), again.kind, again.name, again.n_vocab) == (type(ours), ours.kind, ours.name, ours.n_vocab)
    assert (again.eot_id, again.bos_id, again.add_bos, again.special_ids) == \
        (ours.eot_id, ours.bos_id, ours.add_bos, ours.special_ids)
    for s in STRINGS[:300]:
        assert again.encode(s) == ours.encode(s) and again.encode(s, allow_special=True) == ours.encode(s, True)
    assert [again.token_bytes(t) for t in range(again.n_vocab)] == [ours.token_bytes(t) for t in range(ours.n_vocab)]
    if ours.kind == "hf":
        # the tokenizers file is kept byte for byte and checked against its sha256
        path = tmp_path / HF_FILE
        path.write_text(path.read_text().replace('"merges"', '"merges" ', 1))
        with pytest.raises(TokenizerError, match="does not match the sha256"):
            load_tokenizer(tmp_path)


def test_more_ids_than_the_model_has_is_refused_and_fewer_allowed(folders, loaded):
    n = loaded["gpt2-json"][0].n_vocab
    with pytest.raises(TokenizerError, match=rf"has {n} ids but the model's vocabulary .* only {n - 1}"):
        tokenizer_from_checkpoint(folders["gpt2-json"], vocab_size=n - 1)
    qwen = tokenizer_from_checkpoint(folders["qwen2-nfc"], vocab_size=2048)      # padded embedding
    assert qwen.n_vocab < 2048
    with pytest.raises(TokenizerError, match="vocab_size must be an integer"):
        tokenizer_from_checkpoint(folders["gpt2-json"], vocab_size=True)


def test_bad_folders_say_what_to_give(tmp_path, folders):
    with pytest.raises(TokenizerError, match="no checkpoint folder"):
        tokenizer_from_checkpoint(tmp_path / "nowhere")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(TokenizerError, match="no tokenizer in empty: expected tokenizer.json"):
        tokenizer_from_checkpoint(empty)
    half = tmp_path / "half"
    half.mkdir()
    (half / "vocab.json").write_bytes((folders["gpt2-files"] / "vocab.json").read_bytes())
    with pytest.raises(TokenizerError, match="has vocab.json but no merges.txt"):
        tokenizer_from_checkpoint(half)
    spm = tmp_path / "spm"
    spm.mkdir()
    (spm / "tokenizer.model").write_bytes(b"\x0a\x00")
    with pytest.raises(TokenizerError, match="SentencePiece model.*save_pretrained"):
        tokenizer_from_checkpoint(spm)


def _write_tokenizer(d, tk: tokenizers.Tokenizer, text: str | None = None):
    d.mkdir()
    (d / "tokenizer.json").write_text(text if text is not None else tk.to_str())
    return d


def test_unsupported_models_and_decoders_are_named(tmp_path):
    wp = tokenizers.Tokenizer(models.WordPiece({"[UNK]": 0, "a": 1}, unk_token="[UNK]"))
    with pytest.raises(TokenizerError, match="model is 'WordPiece'; supported: 'BPE'"):
        tokenizer_from_checkpoint(_write_tokenizer(tmp_path / "wp", wp))
    bpe = tokenizers.Tokenizer(models.BPE({"a": 0, "b": 1, "ab": 2}, [("a", "b")]))
    bpe.decoder = decoders.WordPiece()
    with pytest.raises(TokenizerError, match="decoder step 'WordPiece'.*supported: ByteLevel"):
        tokenizer_from_checkpoint(_write_tokenizer(tmp_path / "dec", bpe))
    bpe.decoder = None
    with pytest.raises(TokenizerError, match="has no decoder"):
        tokenizer_from_checkpoint(_write_tokenizer(tmp_path / "nodec", bpe))
    drop = tokenizers.Tokenizer(models.BPE({"a": 0, "b": 1, "ab": 2}, [("a", "b")], dropout=0.1))
    drop.decoder = decoders.ByteLevel()
    with pytest.raises(TokenizerError, match="dropout 0.1 makes encoding random"):
        tokenizer_from_checkpoint(_write_tokenizer(tmp_path / "drop", drop))


def test_damaged_files_are_refused(tmp_path, folders):
    text = (folders["gpt2-json"] / "tokenizer.json").read_text()
    with pytest.raises(TokenizerError, match="not valid JSON.*damaged"):
        tokenizer_from_checkpoint(_write_tokenizer(tmp_path / "cut", None, text[: len(text) // 2]))
    spec = json.loads(text)
    spec["model"]["merges"].append(["no-such", "token"])
    with pytest.raises(TokenizerError, match="damaged"):
        tokenizer_from_checkpoint(_write_tokenizer(tmp_path / "merge", None, json.dumps(spec)))
    spec = json.loads(text)
    del spec["model"]["vocab"]["Ġ"]
    with pytest.raises(TokenizerError, match="unassigned"):
        tokenizer_from_checkpoint(_write_tokenizer(tmp_path / "gap", None, json.dumps(spec)))
    d = tmp_path / "files"
    d.mkdir()
    (d / "vocab.json").write_bytes((folders["gpt2-files"] / "vocab.json").read_bytes())
    (d / "merges.txt").write_text("#version: 0.2\nĠ t h\n")
    with pytest.raises(TokenizerError, match="cannot be read as GPT-2's BPE"):
        tokenizer_from_checkpoint(d)
    (d / "tokenizer_config.json").write_text("{not json")
    with pytest.raises(TokenizerError, match="tokenizer_config.json in files is not valid JSON"):
        tokenizer_from_checkpoint(d)


def test_files_outside_the_folder_are_not_read(tmp_path, folders):
    d = tmp_path / "linked"
    d.mkdir()
    (d / "tokenizer.json").symlink_to(folders["gpt2-json"] / "tokenizer.json")
    with pytest.raises(TokenizerError, match="points outside"):
        tokenizer_from_checkpoint(d)
    # the one layout whose links leave the folder: the Hugging Face cache (snapshot -> its own blobs)
    repo = tmp_path / "hub" / "models--org--tiny"
    (repo / "blobs").mkdir(parents=True)
    (repo / "blobs" / "0123abcd").write_bytes((folders["gpt2-json"] / "tokenizer.json").read_bytes())
    snap = repo / "snapshots" / "rev1"
    snap.mkdir(parents=True)
    (snap / "tokenizer.json").symlink_to("../../blobs/0123abcd")
    tok = tokenizer_from_checkpoint(snap)
    assert (tok.kind, tok.name) == ("pretrained", "org/tiny")
    (snap / "tokenizer.json").unlink()
    (snap / "tokenizer.json").symlink_to(folders["gpt2-json"] / "tokenizer.json")
    with pytest.raises(TokenizerError, match="points outside"):
        tokenizer_from_checkpoint(snap)


def _toy(tmp_path, vocab: dict, merges: list, name: str):
    """A byte-level BPE over all 256 bytes plus `vocab`, with `merges`, as a tokenizer.json folder."""
    full = {c: i for i, c in enumerate(_alphabet())}
    full.update({t: len(full) + i for i, t in enumerate(vocab)})
    tk = tokenizers.Tokenizer(models.BPE(full, merges))
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    return _write_tokenizer(tmp_path / name, tk), tk, full


def test_merges_tiktoken_would_apply_differently_go_to_tokenizers(tmp_path):
    """tiktoken merges any adjacent pair that makes a token; `tokenizers` only listed pairs. Here "bc" is
    merged before "ab", so `tokenizers` leaves "abc" as a + bc (no merge a + bc is listed), while tiktoken
    makes "abc". The check sees it and picks the tokenizers backend, which stays exact."""
    d, tk, full = _toy(tmp_path, ["bc", "ab", "abc"], [("b", "c"), ("a", "b"), ("ab", "c")], "order")
    naive = tiktoken.Encoding("naive", pat_str=r"\S+|\s+",
                              mergeable_ranks={bytes([b]): full[c] for b, c in enumerate(_alphabet())}
                              | {b"bc": full["bc"], b"ab": full["ab"], b"abc": full["abc"]}, special_tokens={})
    assert naive.encode("abc") != tk.encode("abc").ids              # the trap is real
    tok = tokenizer_from_checkpoint(d)
    assert tok.kind == "hf" and "not what the merges make" in tok.meta["backend_reason"]
    assert tok.encode("abc") == tk.encode("abc").ids == [full["a"], full["bc"]]
    assert tok.replay_merges("abc") == [[b"a", b"b", b"c"], [b"a", b"bc"]]
    # ids against merge order: tiktoken ranks by id, tokenizers by merge order
    d, tk, _ = _toy(tmp_path, ["bc", "ab"], [("a", "b"), ("b", "c")], "ids")
    tok = tokenizer_from_checkpoint(d)
    assert tok.kind == "hf" and "do not follow the merge order" in tok.meta["backend_reason"]
    assert tok.encode("abc") == tk.encode("abc").ids
    # consistent merges do go to tiktoken
    d, tk, _ = _toy(tmp_path, ["ab", "abc"], [("a", "b"), ("ab", "c")], "fine")
    tok = tokenizer_from_checkpoint(d)
    assert tok.kind == "pretrained" and tok.encode("abc abcab") == tk.encode("abc abcab").ids


def _alphabet() -> list[str]:
    """GPT-2's byte alphabet in byte order: the character of byte 0, 1, ... 255."""
    return [BYTE_TO_CHAR[b] for b in range(256)]


def test_a_saved_hf_folder_is_ours_not_a_checkpoint(tmp_path, folders):
    with pytest.raises(TokenizerError, match="looks like a Hugging Face tokenizer.json.*tokenizer_from_checkpoint"):
        load_tokenizer(folders["spm"])
    meta = tmp_path / "m"
    meta.mkdir()
    (meta / META_FILE).write_text(json.dumps({"kind": "hf", "name": "x", "n_vocab": 3}))
    with pytest.raises(TokenizerError, match="without the sha256"):
        load_tokenizer(meta)


def _large_vocabulary(d, n_triples: int, nfc: bool):
    """256 bytes, all 65,536 byte pairs and `n_triples` three-byte tokens (a Qwen2-sized vocabulary
    without training one): made fast, loaded as any checkpoint."""
    alphabet = _alphabet()
    vocab = {c: i for i, c in enumerate(alphabet)}
    merges = [(a, b) for a in alphabet for b in alphabet]
    merges += itertools.islice(((alphabet[x] + alphabet[y], alphabet[z]) for x in range(256)
                                for y in range(x + 1, 256) for z in range(256)), n_triples)
    for a, b in merges:
        vocab[a + b] = len(vocab)
    tk = tokenizers.Tokenizer(models.BPE(vocab, merges))
    tk.normalizer = normalizers.NFC() if nfc else None
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    tk.add_special_tokens([AddedToken(EOT, special=True)])
    return _write_tokenizer(d, tk), tk


@pytest.mark.parametrize("n_triples, nfc, kind", [(0, False, "pretrained"), (85_000, True, "hf")])
def test_large_vocabularies_open_once_and_stay_fast(tmp_path, n_triples, nfc, kind):
    """What the pages do on every rerun (encode, spans, one token's bytes) must not cost per-vocabulary
    work: the byte tables are built once, when the tokenizer is opened."""
    import time
    d, tk = _large_vocabulary(tmp_path / "big", n_triples, nfc)
    t0 = time.perf_counter()
    tok = tokenizer_from_checkpoint(d)
    opened = time.perf_counter() - t0
    assert tok.kind == kind and tok.n_vocab == tk.get_vocab_size() > 65_000 + n_triples
    text = " ".join(STRINGS[:200])
    t0 = time.perf_counter()
    for _ in range(5):
        ids = tok.encode(text)
        spans = tok.spans(text)
        raw = [tok.token_bytes(t) for t in ids]
        tok.decode(ids)
    per_view = (time.perf_counter() - t0) / 5
    tk.encode_special_tokens = True          # "<|endoftext|>" typed in the strings stays text
    assert ids == tk.encode(text, add_special_tokens=False).ids and b"".join(raw) == b"".join(s.raw for s in spans)
    print(f"{tok.n_vocab} ids: opened in {opened:.2f} s, encode + spans + bytes + decode of "
          f"{len(text):,} chars in {per_view * 1000:.0f} ms")
    assert opened < 20 and per_view < 0.5, (opened, per_view)


def test_prompts_start_with_bos_where_the_checkpoint_says_so(loaded):
    """What a model reads for a prompt is what the peer's tokenizer gives with its special tokens: the
    SentencePiece-style (Llama) tokenizer puts BOS first, the byte-level ones do not."""
    for name, (ours, peer) in loaded.items():
        text = "Hello world, again"
        assert ours.encode_prompt(text) == peer(text)["input_ids"], name
        assert ours.encode_prompt(text)[ours.add_bos:] == ours.encode(text)
    assert loaded["spm"][0].add_bos and not loaded["gpt2-files"][0].add_bos
