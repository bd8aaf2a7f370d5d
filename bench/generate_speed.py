"""Decoding speed, batch 1: a 20-token prompt and 200 new tokens (greedy), 2 threads, same weights.

    pip install -r requirements-bench.txt && python bench/generate_speed.py

For two shapes, 4L/4H/128 wide with the byte vocabulary and 6L/6H/384 wide with a 4,096-token BPE
vocabulary (trained with rustbpe on tiny shakespeare), context 256, it times:
  (a) torch, full recomputation every step (nanoGPT's generate)
  (b) torch with the model's KV cache
  (c) this project's runtime: core.runtime.Model on onnxruntime, fp32 with its own thread choice (by
      model width), then 1 and 2 threads, then the int8 variant, all on the export's default "shared"
      KV-cache layout (one buffer per layer written in place, fused operators), and fp32 on the old
      "concat" layout (plain ONNX, the cache copied every step), the lever measured rather than assumed
  (d) transformers' GPT2LMHeadModel.generate(use_cache=True), the same weights ported into it, called
      plainly as its users do
and the per-call floor of onnxruntime on a trivial graph, and the memory-bandwidth floor of a decode
step: the bytes it must read (every weight matrix, the head included, one embedding row, and the KV
cache at that context) over the read bandwidth measured in the same run (a 256 MB sum on the bench's
threads; the copy bandwidth is printed too). Weights are random-init (speed does not depend on them;
the port is checked by comparing logits). Each figure is the median of several
whole generations, the variants interleaved (the order rotated each repeat, a pause before each) so the
machine's drift hits all alike and no variant runs in another's wake; ms/token is the
whole generation (prefill included) divided by 200.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from common import default_data_dir, quiet_transformers, set_threads

PROMPT, NEW = 20, 200
PAUSE_S = 0.5          # idle time before each timed variant (see the loop in bench_shape)


def port_to_transformers(model):
    """Our GPT (learned positions, LayerNorm, exact GELU, tied head) as a GPT2LMHeadModel."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel
    c = model.config
    hf = GPT2LMHeadModel(GPT2Config(vocab_size=c.vocab_size, n_positions=c.block_size, n_embd=c.n_embd,
                                    n_layer=c.n_layer, n_head=c.n_head, activation_function="gelu",
                                    resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, layer_norm_epsilon=1e-5,
                                    bos_token_id=None, eos_token_id=None)).eval()
    ours = model.state_dict()
    conv = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
    new = {}
    for k, v in hf.state_dict().items():
        if k.endswith("attn.bias") or k.endswith("attn.masked_bias"):
            continue
        src = ours[k]
        new[k] = src.t() if k.endswith(conv) else src   # Conv1D stores (in, out)
    hf.load_state_dict(new, strict=False)
    with torch.no_grad():
        ids = torch.randint(0, c.vocab_size, (1, 30))
        diff = (hf(input_ids=ids).logits - model(ids).logits).abs().max().item()
    assert diff < 1e-4, f"weight port failed: logits differ by {diff}"
    return hf


def make_run(tmp: Path, model, tokenizer) -> Path:
    from core.checkpoint import checkpoint_path, save_checkpoint
    run = tmp / "run"
    tokenizer.save(run / "tokenizer")
    save_checkpoint(checkpoint_path(run, 0), model, None,
                    {"train_config": {}, "state": {"step": 0, "tokens_seen": 0, "elapsed": 0.0}})
    return run


def trivial_graph_floor(threads: int) -> float:
    import numpy as np
    import onnxruntime as ort
    from onnx import TensorProto, helper
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "floor",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    sess = ort.InferenceSession(proto.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    x = {"x": np.zeros(1, np.float32)}
    times = []
    for _ in range(5000):
        t0 = time.perf_counter()
        sess.run(None, x)
        times.append(time.perf_counter() - t0)
    return 1000 * statistics.median(times)


def measure_bandwidth(repeats: int = 10) -> tuple[float, float]:
    """Read and copy bandwidth (GB/s, medians) on the current thread setting: a 256 MB sum, and a 256 MB
    copy counted as bytes read plus bytes written (as STREAM does)."""
    import torch
    a, b = torch.randn(64 * 2 ** 20), torch.empty(64 * 2 ** 20)
    read, copy = [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        a.sum()
        t1 = time.perf_counter()
        b.copy_(a)
        t2 = time.perf_counter()
        read.append(a.numel() * 4 / (t1 - t0) / 1e9)
        copy.append(2 * a.numel() * 4 / (t2 - t1) / 1e9)
    return statistics.median(read), statistics.median(copy)


def bytes_per_step(mcfg, context: int) -> int:
    """What one fp32 decode step must read: every weight matrix once (the head, tied or not, included),
    one row of the embedding (and of the learned positions), the norms and biases, and the cached keys
    and values of `context` positions."""
    from core.config import count_parameters
    p = count_parameters(mcfg)
    head = mcfg.vocab_size * mcfg.n_embd
    matrices = p["non_embedding"] + head                     # blocks, norms, biases + the head
    rows = mcfg.n_embd * (2 if mcfg.pos_encoding == "learned" else 1)
    kv = 2 * mcfg.n_layer * mcfg.kv_heads * mcfg.head_dim * context
    return 4 * (matrices + rows + kv)


def bench_shape(name, mcfg, tokenizer, threads, repeats, goal, bandwidth):
    import numpy as np
    import torch
    from core.export import ExportConfig, export_model
    from core.quantize import QuantizeConfig, quantize_model
    from core.model import GPT
    from core.runtime import Model

    torch.manual_seed(0)
    model = GPT(mcfg).eval()
    hf = port_to_transformers(model)
    tmp = Path(tempfile.mkdtemp(prefix="bench-gen-"))
    run_dir = make_run(tmp, model, tokenizer)
    export_model(run_dir, tmp / "model", ExportConfig(parity_steps=50))
    export_model(run_dir, tmp / "concat", ExportConfig(parity_steps=50, kv_cache="concat"))
    # int8 for its speed: random weights make agreement meaningless, so the bar is 0 (the fastest recipe)
    quantize_model(tmp / "model", QuantizeConfig(min_agreement=0.0, positions=256))
    rt = Model(tmp / "model")                      # the runtime's own thread choice
    rt1 = Model(tmp / "model", threads=1)
    rt2 = Model(tmp / "model", threads=threads)
    rt8 = Model(tmp / "model", variant="int8")
    rtc = Model(tmp / "concat")
    prompt = torch.randint(0, mcfg.vocab_size, (1, PROMPT), generator=torch.Generator().manual_seed(1))

    # Each variant is a generator of greedy tokens after `prompt`, so whole runs and single steps
    # can both be timed.
    @torch.no_grad()
    def torch_full(prompt, n):
        idx = prompt
        for _ in range(n):
            logits = model(idx[:, -mcfg.block_size:]).logits[:, -1]
            idx = torch.cat([idx, logits.argmax(-1, keepdim=True)], 1)
            yield int(idx[0, -1])

    @torch.no_grad()
    def torch_cache(prompt, n):
        out = model(prompt, use_cache=True, last_only=True)
        for _ in range(n):
            nxt = out.logits[:, -1].argmax(-1, keepdim=True)
            yield int(nxt)
            out = model(nxt, past=out.present, use_cache=True, last_only=True)

    def runtime(m):
        def run(prompt, n):
            logits, cache = m.next_logits(prompt.numpy())
            for _ in range(n):
                t = int(np.argmax(logits))
                yield t
                if cache.length < mcfg.block_size:
                    logits, cache = m.next_logits([[t]], cache)
        return run

    def hf_generate(prompt, n):
        # a plain call, as people run it (a streamer on a second thread alone made it 1.4-1.5x slower);
        # the tokens are yielded after it returns, so the whole run is timed as the others are
        with torch.no_grad():
            out = hf.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=n,
                              min_new_tokens=n, do_sample=False, use_cache=True, pad_token_id=0)
        yield from out[0, prompt.shape[1]:].tolist()

    variants = {"(a) torch, no cache": torch_full, "(b) torch, KV cache": torch_cache,
                f"(c) runtime ({rt.threads} thread(s), its default)": runtime(rt),
                "(c) runtime, 1 thread": runtime(rt1),
                f"(c) runtime, {threads} threads": runtime(rt2),
                f"(c) runtime, int8 ({rt8.threads} thread(s))": runtime(rt8),
                f"(c) runtime, concat layout ({rtc.threads} thread(s))": runtime(rtc),
                "(d) transformers generate(use_cache)": hf_generate}
    ref = list(torch_cache(prompt, NEW))
    agree = {k: sum(a == b for a, b in zip(f(prompt, NEW), ref)) / NEW for k, f in variants.items()}
    # a prompt that brings the context to exactly block_size after NEW tokens: the last steps run at
    # a (nearly) full context
    long_prompt = torch.randint(0, mcfg.vocab_size, (1, mcfg.block_size - NEW),
                                generator=torch.Generator().manual_seed(2))
    times = {k: [] for k in variants}
    late = {k: [] for k in variants}
    names = list(variants)
    for r in range(repeats):
        # the order rotates each repeat, and each variant starts after a pause: torch's OpenMP threads spin
        # for a while after its last call, and on 2 cores that slowed whatever ran next by 5-12 %
        for k in names[r % len(names):] + names[:r % len(names)]:
            f = variants[k]
            time.sleep(PAUSE_S)
            t0 = time.perf_counter()
            for _ in f(prompt, NEW):
                pass
            times[k].append(time.perf_counter() - t0)
            if f is hf_generate:        # no per-token stamps from a plain call: the last 20 steps by difference
                time.sleep(PAUSE_S)
                t0 = time.perf_counter()
                for _ in f(long_prompt, NEW - 20):
                    pass
                t1 = time.perf_counter()
                for _ in f(long_prompt, NEW):
                    pass
                t2 = time.perf_counter()
                late[k].append(((t2 - t1) - (t1 - t0)) / 20)
                continue
            time.sleep(PAUSE_S)
            stamps = [time.perf_counter()]
            for _ in f(long_prompt, NEW):
                stamps.append(time.perf_counter())
            late[k].extend(b - a for a, b in zip(stamps[-21:-1], stamps[-20:]))
    ms = {k: 1000 * statistics.median(v) / NEW for k, v in times.items()}
    ms_full = {k: 1000 * statistics.median(v) for k, v in late.items()}
    spread = {k: (1000 * min(v) / NEW, 1000 * max(v) / NEW) for k, v in times.items()}
    print(f"\n## {name}: {sum(p.numel() for p in model.parameters()):,} parameters, vocab {mcfg.vocab_size}, "
          f"context {mcfg.block_size}; {repeats} runs each, interleaved")
    print(f"{'variant':46s} {'ms/token':>9s} {'(min-max)':>15s} {'tokens/s':>9s} {'ms/step @256':>13s}  greedy = (b)")
    for k in variants:
        lo, hi = spread[k]
        print(f"{k:46s} {ms[k]:9.3f} {f'({lo:.3f}-{hi:.3f})':>15s} {1000 / ms[k]:9.0f} {ms_full[k]:13.3f}  "
              f"{100 * agree[k]:.0f} %")
    read_bw, copy_bw = bandwidth
    c_key = f"(c) runtime ({rt.threads} thread(s), its default)"
    for label, context, table in (("whole generation", PROMPT + NEW // 2, ms), ("one step at 256", mcfg.block_size, ms_full)):
        need = bytes_per_step(mcfg, context)
        floor = need / (read_bw * 1e9) * 1000
        print(f"bandwidth floor, {label}: {need / 1e6:.1f} MB per step / {read_bw:.1f} GB/s read = {floor:.3f} ms "
              f"(at the {copy_bw:.1f} GB/s copy bandwidth: {need / (copy_bw * 1e9) * 1000:.3f} ms); fp32 runtime "
              f"{table[c_key]:.3f} ms = {table[c_key] / floor:.2f}x the read floor (goal <= 1.3x); "
              f"concat layout {table[f'(c) runtime, concat layout ({rtc.threads} thread(s))'] / floor:.2f}x")
    d_key, a_key = "(d) transformers generate(use_cache)", "(a) torch, no cache"
    i8_key = f"(c) runtime, int8 ({rt8.threads} thread(s))"
    for label, table in (("20-token prompt + 200 tokens", ms), ("one step at 256 tokens of context", ms_full)):
        c = table[c_key]
        print(f"{label}: (d)/(c) {table[d_key] / c:.2f}x faster than transformers (goal >= {goal}), "
              f"(a)/(c) {table[a_key] / c:.2f}x; int8: (d)/(c) {table[d_key] / table[i8_key]:.2f}x")
    # what returning attention maps costs: a full 256-token pass with and without them
    full_ids = np.random.default_rng(3).integers(0, mcfg.vocab_size, (1, mcfg.block_size))
    rt.attention(full_ids)
    plain, with_attn = [], []
    for _ in range(20):
        t0 = time.perf_counter()
        rt.logits(full_ids)
        plain.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        rt.attention(full_ids)
        with_attn.append(time.perf_counter() - t0)
    p_ms, a_ms = 1000 * statistics.median(plain), 1000 * statistics.median(with_attn)
    print(f"full {mcfg.block_size}-token pass: {p_ms:.2f} ms (model.onnx), {a_ms:.2f} ms with every layer's "
          f"attention maps (attention.onnx): +{100 * (a_ms / p_ms - 1):.0f} %; decode steps use model.onnx "
          f"and pay nothing for them")
    return ms


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args()
    set_threads(args.threads)
    quiet_transformers()
    import logging
    logging.disable(logging.INFO)           # the exporter's and rustbpe's progress lines
    from core.config import ModelConfig
    from core.data import load_corpus
    from core.tokenizer import byte_tokenizer, train_bpe

    floor1, floor2 = trivial_graph_floor(1), trivial_graph_floor(args.threads)
    bandwidth = measure_bandwidth()
    print(f"memory bandwidth on {args.threads} threads: read {bandwidth[0]:.1f} GB/s, copy {bandwidth[1]:.1f} GB/s")
    print(f"onnxruntime per-call floor (Identity on one float): {1000 * floor1:.1f} us (1 thread), "
          f"{1000 * floor2:.1f} us ({args.threads} threads)")
    small = bench_shape("4L/4H/128, byte vocabulary",
                        ModelConfig(vocab_size=257, block_size=256, n_layer=4, n_head=4, n_embd=128),
                        byte_tokenizer(), args.threads, args.repeats, goal=8, bandwidth=bandwidth)
    corpus = load_corpus("tinyshakespeare", default_data_dir())
    bpe = train_bpe([corpus.text], 4096, name="bpe4096")
    big = bench_shape("6L/6H/384, 4k BPE vocabulary",
                      ModelConfig(vocab_size=bpe.n_vocab, block_size=256, n_layer=6, n_head=6, n_embd=384),
                      bpe, args.threads, args.repeats, goal=4, bandwidth=bandwidth)
    for name, ms in (("4L/128", small), ("6L/384", big)):
        c = min(v for k, v in ms.items() if k.startswith("(c) runtime") and "int8" not in k)
        print(f"{name}: best runtime step {1000 * c:.0f} us/token = {c / floor1:.0f}x the trivial-graph floor")


if __name__ == "__main__":
    main()
