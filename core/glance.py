"""The whole model at a glance: one forward pass of a prompt, read part by part, as the numbers an explainer
draws beside each box (tokens -> embeddings + positions -> each block's layer norm, attention heads,
residual add, MLP -> final norm -> logits -> sampler).

`glance(model, ids, sampler)` returns a `Glance`: at the prompt's last position (the one that predicts the next
token) the residual stream's size at each of the 2L + 1 points `core.interpret` reads, what each attention
and MLP added to it, the scale each layer norm divides by, every head's most-attended earlier token and its
entropy, what the stream would predict if the model stopped there (the logit lens), the logits' top tokens
and how many tokens each sampler stage keeps. Every number comes from the exported graphs (inspect.onnx for
the stream, attention.onnx for the maps, lens.onnx for the unembedding), so the picture cannot disagree with
the model.

Deliberately not here: torch, layout and figures (playground/glance.py), the detailed instruments
(`core.interpret`), the sampler stages themselves (`core.sampling`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from core.interpret import Inspector
from core.limits import Limits
from core.runtime import Model
from core.sampling import SamplerConfig, run_pipeline, softmax

TOP = 5         # tokens listed per prediction


@dataclass(frozen=True)
class Prediction:
    """The top tokens a distribution puts first, most likely first."""
    ids: list[int]
    probs: list[float]


@dataclass(frozen=True)
class HeadGlance:
    head: int
    looks_at: int           # the earlier position the last token attends to most
    weight: float           # that attention weight
    entropy: float          # of the last token's attention row, nats: 0 = one token, ln(T) = uniform


@dataclass(frozen=True)
class BlockGlance:
    layer: int
    norm_in: float          # what the block's first norm divides the entering stream by (`_scale`)
    heads: list[HeadGlance]
    attn_added: float       # |attention's output|, added to the stream
    after_attn: float       # |stream| after the residual add
    norm_mid: float         # ...and the second norm, after the attention add
    mlp_added: float        # |MLP's output|
    after_mlp: float        # |stream| leaving the block
    lens_attn: Prediction   # what the stream predicts after the attention add...
    lens_mlp: Prediction    # ...and after the MLP add


@dataclass(frozen=True)
class StageGlance:
    name: str
    kept: int               # tokens still possible after the stage
    top: Prediction


@dataclass(frozen=True)
class Glance:
    ids: list[int]
    position: int           # the position read: the last one
    embed: float            # |token embedding + position| entering block 0
    blocks: list[BlockGlance]
    norm_out: float         # ...and the final norm
    logits: Prediction      # the model's own next-token distribution
    stream: list[float]     # |stream| at each of the 2L + 1 points (for a line)
    points: list[str]       # their names
    sampler: list[StageGlance]


def _scale(x: np.ndarray, norm: str) -> float:
    """What the model's norm divides this stream vector by: its standard deviation (LayerNorm), its root mean
    square (RMSNorm), or nothing (1, a model without norms)."""
    if norm == "rmsnorm":
        return float(np.sqrt(np.mean(np.square(x, dtype=np.float64))))
    return float(x.std()) if norm == "layernorm" else 1.0


def _top(probs: np.ndarray, k: int = TOP) -> Prediction:
    order = np.argsort(probs)[::-1][:k]
    return Prediction([int(i) for i in order], [float(probs[i]) for i in order])


def glance(model: Model, ids, sampler: SamplerConfig | None = None, limits: Limits | None = None) -> Glance:
    """Read one forward pass of `ids` part by part at its last position (raises `core.interpret`'s errors: a
    model without inspection graphs, or larger than this server inspects)."""
    ins = Inspector(model, limits)
    arr = ins.check_ids(ids)
    T, L, t = len(arr), ins.n_layer, len(arr) - 1
    resid, _ = ins.run(arr)                                         # (1, T, 2L + 1, C)
    rows = resid[0, t]                                              # (2L + 1, C) the last position's stream
    stream = np.linalg.norm(rows, axis=-1)
    lens = ins.lens(rows)
    lens_probs = np.exp(lens.top_logprobs)                          # (2L + 1, k)

    def lens_at(point: int) -> Prediction:
        return Prediction([int(i) for i in lens.top_ids[point, :TOP]], [float(p) for p in lens_probs[point, :TOP]])

    maps = model.attention(arr)
    blocks = []
    for l in range(L):
        enter, mid, leave = rows[2 * l], rows[2 * l + 1], rows[2 * l + 2]
        heads = []
        for h in range(ins.n_head):
            row = maps.probs[l][0, h, t, :T].astype(np.float64)
            nz = row[row > 0]
            heads.append(HeadGlance(h, int(np.argmax(row)), float(row.max()), float(-(nz * np.log(nz)).sum())))
        norm = model.config.norm
        blocks.append(BlockGlance(l, _scale(enter, norm), heads, float(np.linalg.norm(mid - enter)),
                                  float(stream[2 * l + 1]), _scale(mid, norm), float(np.linalg.norm(leave - mid)),
                                  float(stream[2 * l + 2]), lens_at(2 * l + 1), lens_at(2 * l + 2)))
    logits = maps.logits[0, t]
    view = run_pipeline(logits, sampler or SamplerConfig(), history=arr.tolist())
    stages = [StageGlance(s.name, s.kept, _top(s.probs)) for s in view.stages]
    return Glance(arr.tolist(), t, float(stream[0]), blocks, _scale(rows[-1], model.config.norm), _top(softmax(logits)),
                  [float(v) for v in stream], ins.points, stages)
