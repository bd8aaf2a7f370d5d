"""Explanations: the numbers behind each formula of the Learn page, computed from the user's own model.

Holds the positional encodings as this model has them beside the other two (`positional_views`; the
formulas are `core.positions`, which the model itself uses, so picture and model cannot disagree), token-embedding neighbours (`embedding_neighbours`), attention worked through
for one token, head and layer from the graph's own q, k and v (`attention_walkthrough`, whose final
row is the Attention page's heatmap row), and the vocabulary-size trade-off of BPE on a text
(`vocabulary_tradeoff`), and the post-training formulas on a pair of the user's own (`preference_walkthrough`:
the masked SFT loss, DPO's implicit rewards against a reference, their Bradley-Terry preference, the loss;
core.posttrain holds the same formulas in torch, and a test holds the two together).

Deliberately not here: torch (numpy and the exported model only), any page layout, the sampler stages
(`core.sampling`) and text scores (`core.runtime.Model.score`), which the Learn page calls directly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from core.positions import rope_angles, sinusoidal_table
from core.runtime import Model, ModelError
from core.sampling import log_softmax, softmax
from core.tokenizer import Tokenizer, TokenizerError, byte_tokenizer, train_bpe


# ---------------------------------------------------------------------------------------------------
# Positions

# Positions drawn in the positional views: a checkpoint's context can be 32k (Qwen2.5), and a 32k x 32k
# similarity map is 4 GB; past a few hundred rows a heatmap on a page shows nothing more anyway.
MAX_POSITIONS_SHOWN = 256


@dataclass(frozen=True)
class PositionalViews:
    used: str                           # the model's own: learned | sinusoidal | rope
    sinusoidal: np.ndarray              # (T, n_embd), T = min(block_size, MAX_POSITIONS_SHOWN)
    rope: np.ndarray                    # angles (T, head_dim / 2) at the model's own base (rope_theta)
    learned: np.ndarray | None          # wpe (T, n_embd) when the model learned one
    similarity: np.ndarray              # (T, T): how alike two positions look to the model
    rope_theta: float = 10000.0         # RoPE's base in the angles above: pos * theta^(-2i/hs)
    positions: int = 0                  # T: the first positions shown (of block_size)


def positional_views(model: Model) -> PositionalViews:
    """All three encodings at this model's sizes, its own one marked, and a position-similarity map, over
    the first MAX_POSITIONS_SHOWN positions.

    Similarity: for added encodings (learned, sinusoidal), the cosine of two positions' vectors; for
    RoPE, the mean over frequency pairs of cos(angle_i - angle_j), which is what a rotated q·k keeps of
    an unrotated one: it depends on i - j only (and on the model's base, rope_theta)."""
    cfg = model.config
    T, C, hs = min(cfg.block_size, MAX_POSITIONS_SHOWN), cfg.n_embd, model.head_dim
    used = cfg.pos_encoding
    sin_table, angles = sinusoidal_table(T, C), rope_angles(T, hs, cfg.rope_theta)
    learned = model.weights("transformer.wpe.weight").get("transformer.wpe.weight")
    learned = None if learned is None else learned[:T]
    if used == "rope":
        similarity = np.cos(angles[:, None, :] - angles[None, :, :]).mean(axis=-1)
    else:
        table = learned if used == "learned" and learned is not None else sin_table
        unit = table / np.maximum(np.linalg.norm(table, axis=1, keepdims=True), 1e-12)
        similarity = unit @ unit.T
    return PositionalViews(used, sin_table, angles, learned, similarity.astype(np.float32), cfg.rope_theta, T)


# ---------------------------------------------------------------------------------------------------
# Token embeddings

def token_embeddings(model: Model) -> np.ndarray:
    """wte (vocab, n_embd), the rows of the ids the tokenizer has: a tied model's head shares it, so the
    graph may keep it as lm_head.weight (asked for only then: an untied head is another table as large)."""
    table = model.weights("transformer.wte.weight").get("transformer.wte.weight")
    if table is None:
        table = model.weights("lm_head.weight").get("lm_head.weight")
    if table is None:
        raise ModelError(f"{model.name}: model.onnx holds no token embedding table")
    return table[:model.vocab_size]           # a padded embedding's extra rows are no token's


def embedding_neighbours(model: Model, token_id: int, k: int = 8) -> list[tuple[int, str, float]]:
    """The k tokens whose embeddings point most nearly the same way (cosine similarity)."""
    table = token_embeddings(model)
    if not (0 <= int(token_id) < table.shape[0]):
        raise ModelError(f"token id {token_id} is outside the vocabulary (0..{table.shape[0] - 1})")
    # cosines without a normalized copy of the table (a pretrained one is hundreds of MB)
    norms = np.maximum(np.linalg.norm(table, axis=1), 1e-12)
    sims = (table @ table[int(token_id)]) / (norms * norms[int(token_id)])
    order = [int(i) for i in np.argsort(-sims) if int(i) != int(token_id)][:k]
    return [(i, model.tokenizer.token_text(i), float(sims[i])) for i in order]


# ---------------------------------------------------------------------------------------------------
# Attention, worked through

@dataclass(frozen=True)
class AttentionWalk:
    tokens: list[str]                   # the text's tokens, as text
    layer: int
    head: int
    position: int                       # the query token
    q: np.ndarray                       # (hs,) the query of that token (after RoPE if the model uses it)
    k: np.ndarray                       # (T, hs) every token's key
    v: np.ndarray                       # (T, hs) every token's value
    scores: np.ndarray                  # (T,) q · k_j
    scale: float                        # 1 / sqrt(hs)
    scaled: np.ndarray                  # (T,) scores * scale
    allowed: np.ndarray                 # (T,) bool: j <= position (the causal mask)
    masked: np.ndarray                  # (T,) scaled, -inf where not allowed
    probs: np.ndarray                   # (T,) softmax(masked): the row of the heatmap
    head_output: np.ndarray             # (hs,) sum_j probs_j v_j
    heads: np.ndarray                   # (n_embd,) every head's output side by side (this one included)
    projected: np.ndarray               # (n_embd,) heads @ W_o + b: what attention adds to the residual
    graph_row: np.ndarray               # (T,) the same row as the attention graph computed it
    graph_head_output: np.ndarray       # (hs,) this head's slice of `heads`, as the graph computed it
    kv_head: int = 0                    # the key/value head this head reads (head // (n_head / n_kv_head):
                                        # grouped-query attention shares one among several query heads)


def attention_walkthrough(model: Model, text: str | Sequence[int], layer: int, head: int,
                          position: int) -> AttentionWalk:
    """softmax(q kᵀ / sqrt(d_k) + mask) v for one query token, from the graph's own q, k and v (k and v
    as this head reads them: under grouped-query attention, those of its key/value group). `text` is
    text or the token ids a page already holds (decoding and encoding again need not give them back).

    Every step is recomputed here in numpy; `graph_row` and `graph_head_output` are the graph's own
    results, which the recomputation must equal (the Learn page shows both, and a test holds them equal).
    """
    ids = model.tokenizer.encode_prompt(text) if isinstance(text, str) else [int(i) for i in text]
    if not ids:
        raise ModelError("the text is empty; type a few words")
    if len(ids) > model.block_size:
        raise ModelError(f"the text has {len(ids)} tokens, more than the model's context of {model.block_size}; "
                         f"shorten it")
    for name, value, top in (("layer", layer, model.n_layer), ("head", head, model.n_head),
                             ("position", position, len(ids))):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not 0 <= value < top:
            raise ModelError(f"{name} must be an integer from 0 to {top - 1}, got {value!r}")
    maps = model.attention([ids])
    if not maps.parts:
        raise ModelError(f"{model.name} was exported before the attention graph returned q, k and v; export "
                         f"it again with `python -m core.export` to see attention worked through")
    part = maps.parts[layer]
    q_all, k, v = part["q"][0, head], part["k"][0, head], part["v"][0, head]   # (T, hs)
    q = q_all[position]
    hs = q.shape[0]
    scores = k @ q                                                            # (T,)
    scale = 1.0 / math.sqrt(hs)
    scaled = scores * scale
    allowed = np.arange(len(ids)) <= position
    masked = np.where(allowed, scaled, -np.inf)
    probs = softmax(masked)
    head_output = probs @ v
    heads = part["heads"][0, position]
    return AttentionWalk([model.tokenizer.token_text(i) for i in ids], layer, head, position, q, k, v, scores,
                         scale, scaled, allowed, masked, probs, head_output, heads, part["proj"][0, position],
                         maps.probs[layer][0, head, position], heads[head * hs:(head + 1) * hs],
                         head // (model.n_head // model.n_kv_head))


# ---------------------------------------------------------------------------------------------------
# Vocabulary size against sequence length

@dataclass(frozen=True)
class VocabularyPoint:
    vocab_size: int
    tokens: int | None                  # the text's length in tokens (None: this size was not reached)
    bytes_per_token: float | None
    embedding_parameters: int           # vocab x n_embd: what the table costs at this width
    not_reached: str = ""               # why this size could not be trained on the text ("" when it was)


def vocabulary_tradeoff(text: str, sizes: list[int], n_embd: int = 128) -> list[VocabularyPoint]:
    """BPE trained on `text` at each vocabulary size: a larger vocabulary makes the text shorter (less
    attention compute, more context per window) and the embedding table bigger."""
    data = text.encode("utf-8")
    if len(data) < 200:
        raise TokenizerError("give at least a few sentences (200 bytes) to train tokenizers on")
    out, why = [], ""
    for size in sorted(set(sizes)):
        if not why:
            try:
                tok: Tokenizer = byte_tokenizer() if size <= 256 else train_bpe([text], size, name=f"bpe{size}")
                n = len(tok.encode(text))
                out.append(VocabularyPoint(tok.n_vocab, n, len(data) / n, tok.n_vocab * n_embd))
                continue
            except TokenizerError as e:
                why = str(e)    # the text ran out of pairs to merge: larger sizes are not possible on it either
        out.append(VocabularyPoint(size + 1, None, None, (size + 1) * n_embd, why))
    return out


# ---------------------------------------------------------------------------------------------------
# After pre-training: the masked SFT loss, Bradley-Terry and DPO on a pair of the user's own

@dataclass(frozen=True)
class ResponseScore:
    tokens: int                          # response tokens (the prompt's are context, not scored)
    logprob: float                       # their log-probabilities summed, in nats
    whole_loss: float                    # mean -ln p over every predicted token, prompt included (pretraining's)


def response_logprob(model: Model, prompt: str, response: str) -> ResponseScore:
    """log p(response | prompt) under `model`, teacher-forced, the way core.posttrain sums it."""
    p, r = model.tokenizer.encode_prompt(prompt), model.tokenizer.encode(response)
    if not r:
        raise ModelError("the response is empty: write one")
    ids = p + r
    if len(ids) > model.block_size:
        raise ModelError(f"prompt and response are {len(ids)} tokens; this model reads at most {model.block_size}: "
                         f"shorten them")
    logp = log_softmax(model.logits(ids)[0].astype(np.float64))          # (T, V)
    per_token = logp[np.arange(len(ids) - 1), ids[1:]]                  # log p(ids[t+1] | ids[:t+1])
    start = max(len(p) - 1, 0)          # with no prompt the first response token has no context: not scored
    if len(ids) - 1 - start < 1:
        raise ModelError("with no prompt, a one-token response has nothing to score: write a prompt or a longer response")
    return ResponseScore(len(ids) - 1 - start, float(per_token[start:].sum()), float(-per_token.mean()))


@dataclass(frozen=True)
class PreferenceWalk:
    chosen: ResponseScore
    rejected: ResponseScore
    sft_loss: float                      # -log p(chosen) / its tokens: the masked SFT loss on the chosen response
    beta: float
    ref_chosen: ResponseScore | None     # the same under the reference (None: no reference given)
    ref_rejected: ResponseScore | None
    reward_chosen: float | None          # DPO's implicit rewards: beta (log pi - log ref)
    reward_rejected: float | None
    preference: float | None             # Bradley-Terry: sigmoid(r+ - r-), the model's P(chosen preferred)
    dpo_loss: float | None               # -log sigmoid(r+ - r-)


def preference_walkthrough(model: Model, reference: Model | None, prompt: str, chosen: str, rejected: str,
                           beta: float) -> PreferenceWalk:
    """The three post-training formulas on one pair: the masked SFT loss of the chosen response, and, against
    a reference model, DPO's implicit rewards, the Bradley-Terry preference they imply, and the DPO loss."""
    if reference is not None and (reference.tokenizer.name != model.tokenizer.name
                                  or reference.tokenizer.n_vocab != model.tokenizer.n_vocab):
        raise ModelError(f"the reference {reference.name} reads another tokenizer ({reference.tokenizer.name}) than "
                         f"{model.name} ({model.tokenizer.name}): log-probabilities of different tokens cannot be "
                         f"compared. Pick a reference of the same family")
    c, r = response_logprob(model, prompt, chosen), response_logprob(model, prompt, rejected)
    if reference is None:
        return PreferenceWalk(c, r, -c.logprob / c.tokens, beta, None, None, None, None, None, None)
    rc, rr = response_logprob(reference, prompt, chosen), response_logprob(reference, prompt, rejected)
    plus, minus = beta * (c.logprob - rc.logprob), beta * (r.logprob - rr.logprob)
    margin = plus - minus
    log_sigmoid = -math.log1p(math.exp(-margin)) if margin > -30 else margin
    return PreferenceWalk(c, r, -c.logprob / c.tokens, beta, rc, rr, plus, minus, math.exp(log_sigmoid), -log_sigmoid)
