import os

import numpy as np
import pytest

from core import data
from core.data import (CorpusError, corpus_from_upload, decode_corpus_bytes, fetch_corpus,
                       prepare_dataset, read_text_file)
from core.tokenizer import byte_tokenizer, train_bpe


def test_named_corpus_from_the_data_dir_is_checksum_verified(shared_data):
    c = fetch_corpus("tinyshakespeare", shared_data)
    assert c.sha256 == data.CORPORA["tinyshakespeare"].sha256
    assert c.n_bytes == 1_115_394


def test_named_corpus_with_the_wrong_checksum_is_refused(tmp_path):
    (tmp_path / "tinyshakespeare.txt").write_text("not shakespeare")
    with pytest.raises(CorpusError, match="sha256 is not tinyshakespeare's.*delete it"):
        fetch_corpus("tinyshakespeare", tmp_path)


def test_download_failure_says_what_to_do(tmp_path, monkeypatch):
    spec = data.CORPORA["tinyshakespeare"]
    # port 9 (discard) on loopback refuses at once: a real failed download, no outside traffic
    monkeypatch.setitem(data.CORPORA, "tinyshakespeare",
                        data.NamedCorpus(spec.name, "http://127.0.0.1:9/input.txt", spec.sha256,
                                         spec.filename, spec.description))
    with pytest.raises(CorpusError, match="could not download.*put tinyshakespeare.txt in"):
        fetch_corpus("tinyshakespeare", tmp_path)
    assert not (tmp_path / "tinyshakespeare.txt").exists()


def test_tampered_download_is_not_kept(tmp_path, monkeypatch):
    import http.server
    import threading

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            body = b"tampered text\n"
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *a):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        spec = data.CORPORA["tinyshakespeare"]
        monkeypatch.setitem(data.CORPORA, "tinyshakespeare", data.NamedCorpus(
            spec.name, f"http://127.0.0.1:{server.server_port}/input.txt", spec.sha256,
            spec.filename, spec.description))
        with pytest.raises(CorpusError, match="expected 86c4e6aa9db7"):
            fetch_corpus("tinyshakespeare", tmp_path)
        assert list(tmp_path.iterdir()) == []
    finally:
        server.shutdown()


def test_unknown_corpus_name():
    with pytest.raises(CorpusError, match="unknown corpus 'nope'"):
        fetch_corpus("nope")


@pytest.mark.parametrize("raw, message", [
    (b"", "empty"),
    (b"  \n\t ", "empty"),
    (b"\x89PNG\r\n\x1a\n\x00\x00\x00", "binary"),
    ("café".encode("latin-1"), "not UTF-8 text \\(bad byte 0xe9 at offset 3\\)"),
])
def test_bad_corpus_bytes(raw, message):
    with pytest.raises(CorpusError, match=message):
        decode_corpus_bytes(raw, "upload.txt")


def test_upload_limits_and_extension():
    with pytest.raises(CorpusError, match="over the 10-byte limit"):
        corpus_from_upload(b"x" * 11, "big.txt", max_bytes=10)
    with pytest.raises(CorpusError, match="not a text file"):
        corpus_from_upload(b"hello", "model.bin")
    assert corpus_from_upload("héllo".encode(), "ok.txt").text == "héllo"


def test_missing_local_file():
    with pytest.raises(CorpusError, match="no such file"):
        read_text_file("/nonexistent/corpus.txt")


def test_prepare_dataset_split_and_cache(corpus_file, data_dir):
    corpus = read_text_file(corpus_file)
    ds = prepare_dataset(corpus, byte_tokenizer(), data_dir)
    n = len(corpus.text)
    assert len(ds.train) == int(n * 0.9) and len(ds.val) == n - int(n * 0.9)   # ASCII: 1 byte = 1 token
    assert ds.train.dtype == np.uint16 and ds.val_bytes_per_token == 1.0
    mtime = os.path.getmtime(ds.directory / "train.bin")
    again = prepare_dataset(corpus, byte_tokenizer(), data_dir)
    assert again.directory == ds.directory and os.path.getmtime(again.directory / "train.bin") == mtime


def test_nanogpt_split_of_tiny_shakespeare(shared_data, tmp_path):
    corpus = fetch_corpus("tinyshakespeare", shared_data)
    ds = prepare_dataset(corpus, byte_tokenizer(), tmp_path)
    assert (len(ds.train), len(ds.val)) == (1_003_854, 111_540)   # nanoGPT's prepare.py counts


def test_bpe_dataset_equals_encoding_the_whole_text(corpus_file, data_dir):
    corpus = read_text_file(corpus_file)
    bpe = train_bpe([corpus.text], 300)
    ds = prepare_dataset(corpus, bpe, data_dir)
    split = int(len(corpus.text) * 0.9)
    assert ds.train.tolist() == bpe.encode(corpus.text[:split])
    assert ds.val_bytes_per_token > 1.5


def test_chunked_encoding_never_changes_ids():
    tok = train_bpe(["ab ab\n\nab  ab.\n" * 50], 259)
    text = "ab ab\n\n  ab.\n\nab\nab" * 300
    assert data._encode_long(tok, text, chunk_chars=37) == tok.encode(text)


def test_batches_are_shifted_windows(corpus_file, data_dir):
    ds = prepare_dataset(read_text_file(corpus_file), byte_tokenizer(), data_dir)
    x, y = ds.get_batch("train", 4, 16, np.random.default_rng(0))
    assert x.shape == y.shape == (4, 16) and x.dtype == np.int64
    assert (x[:, 1:] == y[:, :-1]).all()
    x2, _ = ds.get_batch("train", 4, 16, np.random.default_rng(0))
    assert (x == x2).all()


def test_corpus_shorter_than_the_context(tmp_path, data_dir):
    p = tmp_path / "short.txt"
    p.write_text("just a few words of text\n" * 3)
    ds = prepare_dataset(read_text_file(p), byte_tokenizer(), data_dir)
    with pytest.raises(CorpusError, match="too short for a context of 64.*smaller block_size"):
        ds.check_block_size(64)


def test_a_tokenizer_name_cannot_steer_the_cache_path(corpus_file, data_dir):
    tok = byte_tokenizer()
    tok.encoding.name = "../../escape"   # as a crafted tokenizer.json could name it
    ds = prepare_dataset(read_text_file(corpus_file), tok, data_dir)
    assert ds.directory.parent == data_dir / "tokenized"
