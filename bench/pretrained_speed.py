"""Pretrained-scale models: import + export cost, decoding speed against transformers, int8 agreement.

    pip install -r requirements-bench.txt && python bench/pretrained_speed.py          # GPT-2 small's shape
    python bench/pretrained_speed.py --shape tiny --repeats 1                          # a quick proof it runs

1. Memory: the read bandwidth of this machine at the decode's thread count (a sum over a 512 MB array),
   from which each variant's floor per token: the bytes of weights a decode step must read (every
   matrix that multiplies, the head included; an embedding lookup reads one row) over that bandwidth;
   the copy bandwidth beside it for reference.
2. Import + export of a GPT-2-small-shaped checkpoint (random init, written by transformers'
   GPT2LMHeadModel.save_pretrained with a small byte-level BPE tokenizer beside it, so the embedding has
   more rows than the tokenizer has ids, as Qwen2's does): `python -m core.pretrained DIR OUT` run as its
   users run it, in its own process; wall time, the card's peak memory and the process's; then its int8
   variant (`python -m core.quantize OUT --min-agreement 0`: the fastest recipe, since random weights
   make agreement meaningless), timed.
3. Decoding, batch 1, a 20-token prompt and 200 new tokens, greedy: core.runtime.Model (fp32, then
   int8) against transformers' `generate(use_cache=True)` on the same weights (the checkpoint above),
   each on the main thread, interleaved and repeated; medians of whole generations; ratios.
4. int8 top-1 agreement with fp32 on trained models, teacher-forced over text: the committed
   exported/shakespeare-char (and -bpe) on tiny shakespeare's last 10 %, and GPT-2 itself when its files
   are already in the Hugging Face cache (never downloaded: HF_HUB_OFFLINE is set here).

Random weights are fine for speed; agreement is only meaningful on a trained model, hence part 4.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"      # this bench never downloads; set before huggingface_hub loads

from common import ROOT, SHARED_DATA, quiet_transformers, set_threads  # noqa: E402

SHAPES = {   # n_layer, n_head, n_embd, vocab (embedding rows), context; the tokenizer has TOKENIZER_IDS ids
    "gpt2-small": (12, 12, 768, 50257, 1024),
    "tiny": (2, 4, 64, 2048, 256),
}
TOKENIZER_IDS = 1000
PROMPT, NEW = 20, 200


def copy_bandwidth_gbs(mb: int = 512, repeats: int = 5) -> float:
    """Best of several numpy copies of an `mb` MB array: (bytes read + bytes written) / time."""
    import numpy as np
    src = np.ones(mb * 2 ** 20 // 4, np.float32)
    dst = np.empty_like(src)
    best = 0.0
    for _ in range(repeats):
        t0 = time.perf_counter()
        np.copyto(dst, src)
        best = max(best, 2 * src.nbytes / (time.perf_counter() - t0) / 1e9)
    return best


def read_bandwidth_gbs(threads: int, mb: int = 512, repeats: int = 5) -> float:
    """Best of several reads of an `mb` MB array (a sum: every byte read once, nothing written), on the
    decode's thread count: what a step that streams its weights can hope for."""
    import torch
    torch.set_num_threads(threads)
    t = torch.ones(mb * 2 ** 20 // 4, dtype=torch.float32)
    best = 0.0
    for _ in range(repeats):
        t0 = time.perf_counter()
        float(t.sum())
        best = max(best, t.numel() * 4 / (time.perf_counter() - t0) / 1e9)
    return best


def bytes_per_token(card: dict, variant: str) -> float:
    """Weight bytes one decode step reads: every matrix that multiplies (the head included, tied or not)
    and the vectors (norms, biases); a lookup of wte or wpe reads one row. int8 reads its matrices at one
    byte each plus a 4-byte scale and a 1-byte zero point per block of 32 (core.quantize's first recipe,
    the head included), the rest at four."""
    from core.config import ModelConfig, count_parameters
    mc = ModelConfig.from_dict(card["model_config"])
    C, H = mc.n_embd, mc.mlp_width
    fc = 2 * H if mc.mlp == "swiglu" else H
    qkv = C + 2 * mc.kv_heads * mc.head_dim
    layers = mc.n_layer * (C * qkv + C * C + C * fc + H * C)
    vectors = count_parameters(mc)["non_embedding"] - layers
    matrices = layers + mc.vocab_size * C
    return (matrices * (1 + 5 / 32) + 4 * vectors) if variant == "int8" else 4 * (matrices + vectors)


def make_checkpoint(directory: Path, shape: str) -> None:
    """A GPT-2-architecture checkpoint as Hugging Face writes it, with a small tokenizer beside it."""
    import torch
    from tokenizers import ByteLevelBPETokenizer
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast
    n_layer, n_head, n_embd, vocab, context = SHAPES[shape]
    corpus = SHARED_DATA / "tinyshakespeare.txt"
    text = corpus.read_text()[:300_000] if corpus.is_file() else " ".join(f"w{i % 997}" for i in range(60_000))
    tok = ByteLevelBPETokenizer()
    tok.train_from_iterator([text], vocab_size=TOKENIZER_IDS - 1, show_progress=False)
    tok.add_special_tokens(["<|endoftext|>"])
    PreTrainedTokenizerFast(tokenizer_object=tok._tokenizer, eos_token="<|endoftext|>").save_pretrained(directory)
    torch.manual_seed(0)
    eot = tok.get_vocab_size() - 1
    GPT2LMHeadModel(GPT2Config(n_layer=n_layer, n_head=n_head, n_embd=n_embd, vocab_size=vocab, n_positions=context,
                               bos_token_id=eot, eos_token_id=eot)).save_pretrained(directory, safe_serialization=True)


def measure_import(checkpoint: Path, out: Path, threads: int) -> dict:
    """`python -m core.pretrained CHECKPOINT OUT` in its own process, timed; then its int8 variant by
    `python -m core.quantize` with the agreement bar at 0 (random weights' flat logits make agreement
    meaningless; this is for speed: the first, fastest recipe), timed apart."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    t0 = time.perf_counter()
    res = subprocess.run([sys.executable, "-m", "core.pretrained", str(checkpoint), str(out)], cwd=ROOT,
                         env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if res.returncode:
        raise SystemExit(f"the import failed:\n{res.stdout}\n{res.stderr}")
    t0 = time.perf_counter()
    q = subprocess.run([sys.executable, "-m", "core.quantize", str(out), "--min-agreement", "0", "--positions", "256"],
                       cwd=ROOT, env=env, capture_output=True, text=True)
    quantize_s = time.perf_counter() - t0
    if q.returncode:
        raise SystemExit(f"the int8 variant failed:\n{q.stdout}\n{q.stderr}")
    # the peak comes from the card (the child resets its high-water mark as the import starts): a
    # child's getrusage maxrss also counts the pages it shared with this process between fork and exec
    return {"wall_s": wall, "quantize_s": quantize_s, "card": json.loads((out / "card.json").read_text()),
            "log": res.stdout + q.stdout}


def bench_decode(out: Path, checkpoint: Path, repeats: int) -> dict:
    import numpy as np
    import torch
    from transformers import GPT2LMHeadModel
    from core.runtime import Model

    hf = GPT2LMHeadModel.from_pretrained(checkpoint).eval()
    fp32, int8 = Model(out), Model(out, variant="int8")
    prompt = np.random.default_rng(1).integers(0, fp32.vocab_size, (1, PROMPT))

    def runtime(m):
        def run():
            logits, cache = m.next_logits(prompt)
            out = []
            for _ in range(NEW):
                t = int(np.argmax(logits))
                out.append(t)
                logits, cache = m.next_logits([[t]], cache)
            return out
        return run

    def transformers_generate():
        with torch.no_grad():
            ids = torch.from_numpy(prompt)
            res = hf.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, use_cache=True,
                              max_new_tokens=NEW, eos_token_id=None, pad_token_id=0)
        return res[0, PROMPT:].tolist()

    peers = {"runtime fp32": runtime(fp32), "runtime int8": runtime(int8),
             "transformers generate(use_cache=True), fp32": transformers_generate}
    # same weights, same greedy tokens? The runtime serves only the tokenizer's ids, and a random model
    # often ranks a padded row first, so transformers' check (untimed) suppresses those rows as we do
    ref = peers["runtime fp32"]()
    agree = {k: sum(a == b for a, b in zip(f(), ref)) / NEW for k, f in peers.items() if "transformers" not in k}
    with torch.no_grad():
        ids = torch.from_numpy(prompt)
        res = hf.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=NEW,
                          eos_token_id=None, pad_token_id=0,
                          suppress_tokens=list(range(fp32.vocab_size, hf.config.vocab_size)) or None)
    agree["transformers generate(use_cache=True), fp32"] = sum(
        a == b for a, b in zip(res[0, PROMPT:].tolist(), ref)) / NEW
    times = {k: [] for k in peers}
    for _ in range(repeats):
        for k, f in peers.items():          # interleaved: drift on a busy machine hits every peer alike
            t0 = time.perf_counter()
            f()
            times[k].append(time.perf_counter() - t0)
    ms = {k: 1000 * statistics.median(v) / NEW for k, v in times.items()}
    return {"ms": ms, "agree": agree, "threads": fp32.threads}


def int8_agreement(model_dir: Path, text: str, windows: int = 40) -> dict | None:
    """Teacher-forced top-1 agreement of int8 with fp32 over `text`, in context-long windows."""
    import numpy as np
    from core.runtime import Model, ModelError
    try:
        fp32, int8 = Model(model_dir), Model(model_dir, variant="int8")
    except ModelError as e:
        print(f"  {model_dir.name}: {e}")
        return None
    ids = fp32.tokenizer.encode(text)
    T = fp32.block_size
    same, total, gap = 0, 0, 0.0
    for start in range(0, min(len(ids) - T, windows * T), T):
        window = [ids[start:start + T]]
        a, b = fp32.logits(window)[0], int8.logits(window)[0]
        same += int((a.argmax(-1) == b.argmax(-1)).sum())
        total += a.shape[0]
        gap = max(gap, float(np.abs(a - b).max()))
    return {"agreement": same / max(total, 1), "tokens": total, "max_logit_gap": gap}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shape", choices=sorted(SHAPES), default="gpt2-small")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args()
    set_threads(args.threads)
    quiet_transformers()

    copy_bw, bw = copy_bandwidth_gbs(), read_bandwidth_gbs(args.threads)
    print(f"memory: read {bw:.1f} GB/s on {args.threads} thread(s) (a sum over 512 MB, best of 5); copy "
          f"{copy_bw:.1f} GB/s (bytes read + written, numpy, one thread)")

    tmp = Path(tempfile.mkdtemp(prefix="bench-pretrained-"))
    checkpoint, out = tmp / "checkpoint", tmp / "exported" / "model"
    make_checkpoint(checkpoint, args.shape)
    size = sum(f.stat().st_size for f in checkpoint.glob("*.safetensors"))
    imp = measure_import(checkpoint, out, args.threads)
    card, cost = imp["card"], imp["card"]["export"]
    print(f"\n## import + export, {args.shape} shape: {card['parameters']['total']:,} parameters, "
          f"{size / 1e6:.0f} MB of safetensors")
    print(f"wall {imp['wall_s']:.1f} s (the card: {cost['seconds']:.1f} s after Python and torch loaded); peak "
          f"resident memory {cost['peak_rss_mb']:.0f} MB = {cost['peak_rss_mb'] / (size / 1e6):.1f}x the checkpoint "
          f"(the import's process, libraries included)")
    for name, nbytes in card["files"].items():
        print(f"  {name:24s} {nbytes / 1e6:9.1f} MB")
    int8 = card["variants"]["int8"]
    print(f"int8 variant (python -m core.quantize, first recipe: {int8['recipe']}): {imp['quantize_s']:.1f} s wall")

    dec = bench_decode(out, checkpoint, args.repeats)
    bw = max(bw, read_bandwidth_gbs(args.threads))      # measured again beside the decoding: the best of both
    peer = "transformers generate(use_cache=True), fp32"
    print(f"\n## decoding, batch 1, {PROMPT}-token prompt + {NEW} tokens, greedy ({args.threads} torch threads, "
          f"the runtime's own choice: {dec['threads']})")
    print(f"{'':46s} {'ms/token':>9s} {'tokens/s':>9s} {'floor ms':>9s} {'x floor':>8s} {'vs peer':>8s}  tokens = fp32")
    for k, ms in dec["ms"].items():
        variant = "int8" if "int8" in k else "fp32"
        floor = 1000 * bytes_per_token(card, variant) / (bw * 1e9)
        print(f"{k:46s} {ms:9.3f} {1000 / ms:9.0f} {floor:9.3f} {ms / floor:8.1f} {dec['ms'][peer] / ms:7.2f}x"
              f"  {100 * dec['agree'][k]:.0f} %")
    print(f"floor: the weight bytes one step reads / the read bandwidth ({bw:.1f} GB/s, the best of a measurement "
          f"before and one after the decoding); 'vs peer' > 1 is faster than transformers")

    print("\n## int8 top-1 agreement with fp32, teacher-forced on text")
    corpus = SHARED_DATA / "tinyshakespeare.txt"
    text = corpus.read_text()[-100_000:] if corpus.is_file() else None
    if text is None:
        print("  ../shared/data/tinyshakespeare.txt is not here: no trained-model agreement measured")
    else:
        for name in ("shakespeare-char", "shakespeare-bpe"):
            r = int8_agreement(ROOT / "exported" / name, text)
            if r:
                print(f"  {name}: {100 * r['agreement']:.1f} % over {r['tokens']:,} tokens, max logit gap "
                      f"{r['max_logit_gap']:.2f}")
        from core.pretrained import ImportConfig, PretrainedError, import_pretrained, resolve_source
        try:
            resolve_source("gpt2")
        except PretrainedError:
            print("  gpt2: not in the Hugging Face cache (nothing downloaded); place its files there to measure it")
        else:
            import_pretrained("gpt2", tmp / "exported" / "gpt2", ImportConfig(int8=True, block_size=256))
            r = int8_agreement(tmp / "exported" / "gpt2", text, windows=10)
            if r:
                print(f"  gpt2: {100 * r['agreement']:.1f} % over {r['tokens']:,} tokens, max logit gap "
                      f"{r['max_logit_gap']:.2f}")
    print(f"\n(files in {tmp}; remove them when done)")


if __name__ == "__main__":
    main()
