import hashlib

import pytest
import tiktoken
import tiktoken.load

from core.tokenizer import (EOT, MAX_BPE_VOCAB, RANKS_FILE, TokenizerError, byte_tokenizer,
                            load_tokenizer, openai_tokenizer, train_bpe)
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
        openai_tokenizer("cl100k_base")
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
