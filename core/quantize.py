"""Quantized variants that agree with their model: 8-bit weights, measured against fp32 before they are kept.

Holds `quantize_model()` and its CLI (`python -m core.quantize MODEL_DIR [--text FILE] [--approximate]`),
which write an exported model's `model.int8.onnx` from its fp32 graph, torch-free, and record in the card
how closely it agrees with fp32 and how fast it decodes. The exporter calls the same function.

How: the weight of every matrix product becomes 8-bit integers in blocks of 32 along its input, each block
with its own scale and zero point (onnxruntime's `MatMulNBits`). A whole-row scale (dynamic int8, what
this module replaces) lets one large weight flatten all the small ones of its row and quantizes the
activations with one scale per tensor: on the trained Shakespeare models one next token in thirteen
changed. Blocks keep each scale local.

Agreement: teacher-forced top-1 agreement, the share of positions of a text at which the variant's most
likely next token is fp32's, over `QuantizeConfig.positions` positions of held-out text (`--text`: a
run's validation split, say) or, when none is given, of text the fp32 model samples itself (seeded:
text the model finds likely, from any checkpoint, with no corpus needed). The recipes in `RECIPES` are
tried fastest first, and the first that reaches `min_agreement` (99 %) is kept; when none does, nothing
is written, unless `approximate` is set: then the best is kept and labelled approximate, in the card and
on the pages.

Deliberately not here: torch (the fp32 graph comes from `core.export`), fp16, the runtime's own sessions.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from core import checks, cli
from core.catalog import CARD_FILE, EXTERNAL_DATA_SUFFIX, MODEL_FILE, VARIANT_FILES, graph_bytes
from core.checks import PlaygroundError
from core.config import MLM_FP32_ONLY, ModelConfig
from core.files import make_readable, write_atomic
from core.runtime import CachedGraph

VARIANT = "int8"
WINDOW = 256        # tokens per teacher-forced call: a window's logits are WINDOW x vocabulary floats (150k wide
                    # for Qwen2: 155 MB at 256, 1.2 GB at 2,048)


class QuantizeError(PlaygroundError):
    """No quantized variant agrees well enough with fp32, or the model cannot be quantized; nothing was written."""


@dataclass(frozen=True)
class Recipe:
    """One way to quantize, as the card and the pages name it."""

    name: str
    accuracy_level: int     # MatMulNBits: 4 = int8 arithmetic on blocks of the activations (fast);
                            # 0 = the weights dequantized to fp32 (slower, the closest)
    keep_head: bool         # the vocabulary projection stays fp32: its errors land on the logits directly
    keep_blocks: tuple[str, ...] = ()   # "first", "last": transformer blocks left in fp32


RECIPES = (
    Recipe("8-bit weights and arithmetic", 4, False),
    Recipe("8-bit weights and arithmetic, head in fp32", 4, True),
    Recipe("8-bit weights and arithmetic, first block and head in fp32", 4, True, ("first",)),
    Recipe("8-bit weights and arithmetic, first and last blocks and head in fp32", 4, True, ("first", "last")),
    Recipe("8-bit weights, fp32 arithmetic, head in fp32", 0, True),
)


@dataclass
class QuantizeConfig:
    min_agreement: float = 0.99     # teacher-forced top-1 agreement with fp32 a variant must reach to be kept
    approximate: bool = False       # keep the best variant even below min_agreement, labelled approximate
    positions: int = 2048           # positions measured: at 99 %, +-0.4 % (two standard errors)
    block: int = 32                 # weights per scale: smaller blocks agree better and take more bytes
    seed: int = 0                   # for the sampled text, when no text is given

    def __post_init__(self):
        checks.number("min_agreement", self.min_agreement, 0.0, 1.0)
        checks.integer("positions", self.positions, 64)
        checks.choice("block", self.block, (16, 32, 64, 128))


def is_approximate(report: dict) -> bool:
    """Whether a card's int8 variant is below the agreement bar, or was made before there was one (dynamic
    int8, which changed about one next token in thirteen on the default models)."""
    if "recipe" not in report or "top1_agreement" not in report:
        return True
    bar = report.get("min_agreement", QuantizeConfig.min_agreement)
    return bool(report.get("approximate")) or report["top1_agreement"] < bar


# -- onnxruntime sessions, as the export's checks and this module run them -----------------------------

def session(path: Path, threads: int = 1):
    import onnxruntime as ort
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.enable_cpu_mem_arena = False
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def open_graph(path: Path, cfg: ModelConfig, threads: int = 1) -> CachedGraph:
    """A variant's graph on its own session, run the way the runtime runs it (either cache layout)."""
    return CachedGraph(session(path, threads), cfg.n_layer, cfg.block_size)


def run_cached(graph: CachedGraph, ids: np.ndarray, n_prompt: int) -> tuple[np.ndarray, list[float]]:
    """Prefill n_prompt tokens, then decode the rest one by one; logits (B, T, V) and each step's seconds."""
    logits, cache = graph.step(ids[:, :n_prompt], graph.empty_cache(ids.shape[0]))
    out, times = [logits], []
    for t in range(n_prompt, ids.shape[1]):
        t0 = time.perf_counter()
        logits, cache = graph.step(ids[:, t:t + 1], cache)
        times.append(time.perf_counter() - t0)
        out.append(logits)
    return np.concatenate(out, axis=1).astype(np.float32), times


def _prefill(graph: CachedGraph, ids: np.ndarray) -> np.ndarray:
    """Logits (B, T, V) of a whole window in one call."""
    return graph.step(ids, graph.empty_cache(ids.shape[0]))[0]


# -- the text the agreement is measured on -------------------------------------------------------------

def windows_of(ids: list[int], block_size: int, positions: int) -> list[np.ndarray]:
    """The first `positions` tokens of `ids` in windows of the context (at most WINDOW; the last shorter)."""
    ids, size = list(ids)[:positions], min(block_size, WINDOW)
    return [np.array([ids[i:i + size]], dtype=np.int64) for i in range(0, len(ids), size)
            if len(ids[i:i + size]) >= 2]


def sampled_windows(graph: CachedGraph, cfg: ModelConfig, n_vocab: int, positions: int,
                    seed: int) -> list[np.ndarray]:
    """Text the fp32 model writes itself (temperature 1, seeded), in windows of the context (at most WINDOW)."""
    rng = np.random.default_rng(seed)
    out, left = [], positions
    while left >= 2:
        length = min(cfg.block_size, WINDOW, left)
        ids = [int(rng.integers(n_vocab))]
        step, cache = np.array([ids], dtype=np.int64), graph.empty_cache()
        while len(ids) < length:
            logits, cache = graph.step(step, cache)
            z = logits[0, -1, :n_vocab].astype(np.float64)
            p = np.exp(z - z.max())
            ids.append(int(rng.choice(n_vocab, p=p / p.sum())))
            step = np.array([[ids[-1]]], dtype=np.int64)
        out.append(np.array([ids], dtype=np.int64))
        left -= length
    return out


# -- the graph -------------------------------------------------------------------------------------------

def _gemms_as_matmuls(graph) -> None:
    """Gemm(x, W, b) with a constant W (the "shared" export's Linear layers, transB=1) as MatMul(x, W^T) +
    Add(b): the quantizer makes MatMulNBits of MatMul only (`_fold_biases` puts b back inside)."""
    from onnx import helper, numpy_helper
    inits = {i.name: i for i in graph.initializer}
    nodes = []
    for node in graph.node:
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if (node.op_type != "Gemm" or node.input[1] not in inits or attrs.get("transA", 0)
                or attrs.get("alpha", 1.0) != 1.0 or attrs.get("beta", 1.0) != 1.0):
            nodes.append(node)
            continue
        weight = node.input[1]
        if attrs.get("transB", 0):
            weight = node.input[1] + ".t"
            graph.initializer.append(numpy_helper.from_array(numpy_helper.to_array(inits[node.input[1]]).T.copy(), weight))
        has_bias = len(node.input) > 2 and node.input[2]
        product = node.output[0] + ".product" if has_bias else node.output[0]
        nodes.append(helper.make_node("MatMul", [node.input[0], weight], [product], name=node.name))
        if has_bias:
            nodes.append(helper.make_node("Add", [product, node.input[2]], [node.output[0]], name=node.name + ".bias"))
    del graph.node[:]
    graph.node.extend(nodes)
    used = {i for n in graph.node for i in n.input}
    keep = [i for i in graph.initializer if i.name in used]
    del graph.initializer[:]
    graph.initializer.extend(keep)


def _fold_biases(graph) -> None:
    """MatMulNBits followed by the Add of a constant bias: the bias as MatMulNBits' own input (one node)."""
    inits = {i.name for i in graph.initializer}
    consumers: dict[str, list] = {}
    for node in graph.node:
        for i in node.input:
            consumers.setdefault(i, []).append(node)
    outputs = {o.name for o in graph.output}
    drop = set()
    for node in graph.node:
        if node.op_type != "MatMulNBits" or len(node.input) > 4:
            continue
        users = consumers.get(node.output[0], [])
        if len(users) != 1 or node.output[0] in outputs:
            continue
        add = users[0]
        bias = [i for i in add.input if i != node.output[0]]
        if add.op_type != "Add" or len(bias) != 1 or bias[0] not in inits:
            continue
        node.input.extend([""] * (5 - len(node.input)) + [bias[0]])    # zero_points, g_idx unused, then bias
        node.output[0] = add.output[0]
        drop.add(id(add))
    kept = [n for n in graph.node if id(n) not in drop]
    del graph.node[:]
    graph.node.extend(kept)


def _weight_matmuls(graph, untie: bool) -> tuple[list, object | None]:
    """The matrix products with a constant weight in graph order, and the head's among them (the last
    one). A tied head reads the embedding through a Transpose: with `untie`, its weight becomes a constant
    of its own (a quantized copy; the fp32 embedding stays for the lookup); without, it stays fp32 and is
    not among the products."""
    from onnx import numpy_helper
    inits = {i.name: i for i in graph.initializer}
    producer = {out: node for node in graph.node for out in node.output}
    head = None
    for node in graph.node:
        if node.op_type != "MatMul":
            continue
        src = producer.get(node.input[1])
        if src is not None and src.op_type == "Transpose" and src.input[0] in inits:
            head = node             # tied: (V, C) embedding read as (C, V)
            if not untie:
                continue
            untied = node.input[1] + ".untied"
            array = numpy_helper.to_array(inits[src.input[0]]).T.copy()
            graph.initializer.append(numpy_helper.from_array(array, untied))
            node.input[1] = untied
            inits[untied] = graph.initializer[-1]
    matmuls = [n for n in graph.node if n.op_type == "MatMul" and n.input[1] in inits]
    if head is None and matmuls:
        head = matmuls[-1]
    return matmuls, head


def _excluded(recipe: Recipe, matmuls: list, head, n_layer: int) -> list[str] | None:
    """The products a recipe keeps in fp32; None when the graph does not show its blocks (a recipe that
    keeps a block cannot be applied, and is not claimed)."""
    body = [n for n in matmuls if n is not head]
    keep = [head.name] if recipe.keep_head and head is not None else []
    if recipe.keep_blocks:
        if not body or len(body) % n_layer:
            return None
        per = len(body) // n_layer
        if "first" in recipe.keep_blocks:
            keep += [n.name for n in body[:per]]
        if "last" in recipe.keep_blocks:
            keep += [n.name for n in body[-per:]]
    return keep


def _quantize(fp32: Path, target: Path, recipe: Recipe, cfg: QuantizeConfig, n_layer: int, external: bool) -> bool:
    """Write `recipe`'s variant of `fp32` to `target`; False (nothing written) when it cannot be applied."""
    import logging

    import onnx
    from onnxruntime.quantization.matmul_nbits_quantizer import DefaultWeightOnlyQuantConfig, MatMulNBitsQuantizer
    logging.getLogger("onnxruntime.quantization").setLevel(logging.WARNING)    # a line per node otherwise
    proto = onnx.load(str(fp32))
    _gemms_as_matmuls(proto.graph)
    matmuls, head = _weight_matmuls(proto.graph, untie=not recipe.keep_head)
    exclude = _excluded(recipe, matmuls, head, n_layer)
    if exclude is None:
        return False
    algo = DefaultWeightOnlyQuantConfig(block_size=cfg.block, is_symmetric=False, bits=8,
                                        accuracy_level=recipe.accuracy_level)
    q = MatMulNBitsQuantizer(proto, bits=8, block_size=cfg.block, is_symmetric=False,
                             accuracy_level=recipe.accuracy_level, nodes_to_exclude=exclude, algo_config=algo)
    q.process()
    model = q.model.model
    _fold_biases(model.graph)
    del proto
    if external:
        onnx.save_model(model, str(target), save_as_external_data=True, all_tensors_to_one_file=True,
                        location=target.name + EXTERNAL_DATA_SUFFIX)
    else:
        write_atomic(target, model.SerializeToString())
    return True


# -- the whole job -----------------------------------------------------------------------------------------

def quantize_model(model_dir: str | os.PathLike, cfg: QuantizeConfig | None = None,
                   text_ids: list[int] | None = None, text_name: str | None = None,
                   say=lambda line: None) -> dict:
    """Write `model_dir`'s int8 variant (the first recipe that agrees with fp32) and record it in the card;
    returns the card's report of it. `text_ids`: held-out text to measure on (`text_name` says what it is
    in the card); None: text the fp32 model samples. Raises QuantizeError, writing nothing, when no recipe
    reaches `cfg.min_agreement` and `cfg.approximate` is off."""
    cfg = cfg or QuantizeConfig()
    model_dir = Path(model_dir)
    card_path = model_dir / CARD_FILE
    try:
        card = json.loads(card_path.read_text(encoding="utf-8"))
        mc = ModelConfig.from_dict(card["model_config"])
        n_vocab = int(card["tokenizer"]["n_vocab"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise QuantizeError(f"{model_dir} is not an exported model directory ({type(e).__name__}: {e}); "
                            f"export the model first") from e
    if mc.objective == "mlm":
        raise QuantizeError(f"{model_dir}: {MLM_FP32_ONLY}")
    fp32 = model_dir / MODEL_FILE
    if not fp32.is_file():
        raise QuantizeError(f"{model_dir} has a card but no {MODEL_FILE}; export the model again")
    external = fp32.with_name(fp32.name + EXTERNAL_DATA_SUFFIX).exists()
    ref_graph = open_graph(fp32, mc, threads=_threads(mc))
    if text_ids is not None:
        bad = [t for t in text_ids if not 0 <= t < n_vocab]
        if bad:
            raise QuantizeError(f"the text's token ids must lie in [0, {n_vocab}); got {bad[0]}")
        windows, source = windows_of(text_ids, mc.block_size, cfg.positions), text_name or "the given text"
    else:
        say(f"sampling {cfg.positions} tokens from the fp32 model to measure agreement on")
        windows = sampled_windows(ref_graph, mc, n_vocab, cfg.positions, cfg.seed)
        source = "text the fp32 model sampled (temperature 1)"
    if sum(w.shape[1] for w in windows) < 64:
        raise QuantizeError(f"the text gives {sum(w.shape[1] for w in windows)} positions; give at least 64")
    ref = [_prefill(ref_graph, w)[0, :, :n_vocab].argmax(-1) for w in windows]
    del ref_graph

    work = Path(tempfile.mkdtemp(prefix=".int8-", dir=model_dir))
    try:
        best = None
        for recipe in RECIPES:
            candidate = work / recipe.name.replace(" ", "_").replace(",", "") / VARIANT_FILES[VARIANT]
            candidate.parent.mkdir()
            say(f"quantizing: {recipe.name}")
            if not _quantize(fp32, candidate, recipe, cfg, mc.n_layer, external):
                say("  (not applicable: the graph does not show its blocks)")
                continue
            graph = open_graph(candidate, mc, threads=_threads(mc))
            same = np.concatenate([_prefill(graph, w)[0, :, :n_vocab].argmax(-1) == r
                                   for w, r in zip(windows, ref)])
            agreement = float(same.mean())
            say(f"  top-1 agreement with fp32: {agreement:.2%} over {same.size} positions")
            if best is None or agreement > best[1]:
                best = (recipe, agreement, candidate, graph)
            if agreement >= cfg.min_agreement:
                break
        recipe, agreement, candidate, graph = best
        approximate = agreement < cfg.min_agreement
        if approximate and not cfg.approximate:
            raise QuantizeError(
                f"no int8 recipe agrees with fp32 on {cfg.min_agreement:.0%} of next tokens (the best, "
                f"{recipe.name}, on {agreement:.1%} of {same.size} positions of {source}); nothing was written. "
                f"Keep fp32, or keep it labelled approximate: --approximate (python -m core.quantize) or "
                f"--int8-approximate (python -m core.export)")
        # fp32 opened again (it was let go while the recipes ran: a large model's two graphs at once are
        # gigabytes), so the two speeds the picker compares are measured side by side
        fp32_ms, int8_ms = _decode_ms([open_graph(fp32, mc, threads=_threads(mc)), graph], windows)
        report = {"file": VARIANT_FILES[VARIANT], "bytes": graph_bytes(candidate), "recipe": recipe.name,
                  "top1_agreement": agreement, "agreement_positions": int(same.size), "agreement_text": source,
                  "min_agreement": cfg.min_agreement, "approximate": approximate,
                  "decode_ms_median": int8_ms, "fp32_decode_ms_median": fp32_ms,
                  "quantize": asdict(cfg)}
        del graph
        # into place: the card forgets the old variant first (a crash midway lists none rather than a
        # mismatched one), then the external weights, the graph that names them, and the card again
        if VARIANT in card.get("variants", {}):
            card["variants"].pop(VARIANT)
            write_atomic(card_path, json.dumps(card, indent=2).encode())
        for path in sorted(candidate.parent.iterdir(), key=lambda p: p.suffix != EXTERNAL_DATA_SUFFIX):
            make_readable(path)
            if "files" in card:
                card["files"][path.name] = path.stat().st_size
            os.replace(path, model_dir / path.name)
        card.setdefault("variants", {})[VARIANT] = report
        if "fp32" in card["variants"]:      # both speeds from this run, so the picker compares like with like
            card["variants"]["fp32"]["decode_ms_median"] = fp32_ms
        card.get("variants_not_kept", {}).pop(VARIANT, None)
        write_atomic(card_path, json.dumps(card, indent=2).encode())
        return report
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _threads(mc: ModelConfig) -> int:
    from core.runtime import default_threads      # the runtime's choice, so the timings are the pages'
    return default_threads(mc.n_embd)


def _decode_ms(graphs: list[CachedGraph], windows: list[np.ndarray], steps: int = 32, rounds: int = 4) -> list[float]:
    """Median milliseconds of a cached decode step of each graph (after a prefill of up to 8 tokens of the
    longest window): the graphs take turns for `rounds` rounds, so the machine's drift hits them alike, and the
    first round only warms them up (a single 32-step pass, each graph timed once, swung 0.14-0.26 ms on one model)."""
    window = max(windows, key=lambda w: w.shape[1])         # >= 2 tokens: at least one step
    prefill = min(8, window.shape[1] - 1)
    times: list[list[float]] = [[] for _ in graphs]
    for r in range(rounds):
        for graph, kept in zip(graphs, times):
            _, t = run_cached(graph, window[:, :prefill + steps], prefill)
            if r:
                kept.extend(t)
    return [1000 * statistics.median(t) for t in times]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m core.quantize",
        description="Write an exported model's int8 variant: the first recipe whose next tokens agree with fp32 "
                    "on at least --min-agreement of the positions measured; nothing is written when none does.")
    p.add_argument("model_dir", help="an exported model directory, e.g. exported/shakespeare-char")
    p.add_argument("--text", help="a UTF-8 text file to measure agreement on (held-out text, such as a "
                                  "validation split); default: text the fp32 model samples")
    cli.add_dataclass_args(p, QuantizeConfig)
    args = p.parse_args(argv)
    try:
        cfg = QuantizeConfig(**cli.dataclass_kwargs(args, QuantizeConfig))
        ids = name = None
        if args.text:
            from core.data import read_text_file
            from core.tokenizer import load_tokenizer
            from core.catalog import TOKENIZER_DIR, shown_path
            text = read_text_file(args.text).text
            ids = load_tokenizer(Path(args.model_dir) / TOKENIZER_DIR).encode(text[:cfg.positions * 64])
            name = shown_path(args.text)
        report = quantize_model(args.model_dir, cfg, ids, name, say=lambda line: print(line, flush=True))
    except (PlaygroundError, OSError) as e:
        return cli.report_error(e, "free some space and quantize again: nothing was written")
    print(f"{args.model_dir}/{report['file']}: {report['recipe']}; top-1 agreement {report['top1_agreement']:.2%} "
          f"over {report['agreement_positions']} positions of {report['agreement_text']}"
          + (" (approximate)" if report["approximate"] else "")
          + f"; {report['decode_ms_median']:.2f} ms per decode step (fp32 {report['fp32_decode_ms_median']:.2f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
