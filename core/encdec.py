"""Encoder vs decoder: a masked LM (BERT's kind: bidirectional attention, fills blanks) and a GPT (causal
attention, predicts the next token) side by side on one text, computed from the two exported models.

Holds `side_by_side` (both models' attention maps for one layer and head; the blank filled from both sides by
the MLM and guessed from the left by the GPT; each model's loss on the text under its own objective; and the
two asked to write: the GPT continues greedily, the MLM unmasks one appended [MASK] at a time) and `partner`
(the next-token model whose tokenizer reads a text into the same ids as the MLM's, so the two see the same
tokens).

Deliberately not here: torch (both models run on onnxruntime through `core.runtime`), the masking and the
reading of blanks (`core.mlm`), any page layout (the Learn page's "Encoder vs decoder" section draws this).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np

from core.mlm import Blank, fill_blanks, mask_tokens, unmask_left_to_right
from core.runtime import Model, ModelError
from core.sampling import log_softmax

LOSS_SEED = 0           # the fixed mask the MLM's loss on a text is measured under


@dataclass
class SideBySide:
    ids: list[int]                   # the text's tokens (both models read these ids)
    position: int                    # the token hidden as the blank
    gpt_attention: np.ndarray        # (T, T) the GPT's attention in the chosen layer and head: zero above the diagonal
    mlm_attention: np.ndarray        # (T, T) the MLM's: every position reads every other
    gpt_future: float                # mean weight a row puts on later positions (above the diagonal): 0 for a GPT
    mlm_future: float                # and for the MLM
    mlm_blank: Blank                 # the MLM's guesses for the blank, read from both sides
    gpt_blank: Blank                 # the GPT's guesses for the same token, from the tokens before it alone
    gpt_loss: float                  # nats per token: next-token loss on the text (every token after the first)
    mlm_loss: float                  # nats per masked token: the MLM's loss at BERT-masked positions of the text
    mlm_masked: int                  # how many positions that loss averages over
    gpt_writes: list[int]            # the GPT's greedy continuation of the text
    mlm_writes: list[int]            # the MLM's, appending a [MASK] and filling it, again and again


def future_weight(probs: np.ndarray) -> float:
    """The mean attention weight a row of probs (T, T) puts on positions after its own: what a causal mask forbids."""
    return float(np.triu(probs, 1).sum(axis=1).mean())


def default_blank(pieces: Sequence[str]) -> int:
    """The position to hide first: the word-character token nearest the middle with a token on each side (a letter
    inside a word is a telling blank: both sides constrain it; a comma or a space mostly is not)."""
    middle = len(pieces) // 2
    inner = [i for i in range(1, len(pieces) - 1) if any(ch.isalnum() for ch in pieces[i])]
    return min(inner, key=lambda i: (abs(i - middle), i)) if inner else middle


def partner(mlm: Model, candidates: Iterable[Model]) -> Model | None:
    """The first next-token model whose tokenizer is the MLM's without its [MASK] (same name and kind, one id
    fewer): the same text becomes the same ids in both, so their maps and guesses line up token by token."""
    tok = mlm.tokenizer
    for m in candidates:
        if not m.masked and m.tokenizer.name == tok.name and m.tokenizer.kind == tok.kind \
                and m.tokenizer.n_vocab == tok.n_vocab - 1:
            return m
    return None


def window(gpt: Model, mlm: Model, text: str) -> list[int]:
    """The ids both models read of `text`: its tokens, cut to its end within the shorter context."""
    return gpt.tokenizer.encode(text)[-min(gpt.block_size, mlm.block_size):]


def side_by_side(gpt: Model, mlm: Model, text: str, position: int, layer: int = 0, head: int = 0,
                 k: int = 5, n_write: int = 40, blanks_ahead: int = 0) -> SideBySide:
    """Both models on `text` (cut to the shorter context), the token at `position` hidden as the blank.
    `blanks_ahead`: how many more [MASK]s follow the one the MLM fills as it writes (room on the right)."""
    if not mlm.masked or gpt.masked:
        raise ModelError("side_by_side compares a masked LM (objective mlm) with a next-token model: pass one of each")
    ids = window(gpt, mlm, text)
    if len(ids) < 2:
        raise ModelError("give a text of at least 2 tokens: the blank needs a neighbour to be read from")
    if not 0 <= position < len(ids):
        raise ModelError(f"the blank must be one of the text's {len(ids)} tokens, not position {position}")
    for m in (gpt, mlm):
        if not (0 <= layer < m.n_layer and 0 <= head < m.n_head):
            raise ModelError(f"{m.name} has {m.n_layer} layers of {m.n_head} heads; layer {layer} head {head} is not one")
    mask = mlm.tokenizer.mask_id
    blanked = list(ids)
    blanked[position] = mask
    mlm_maps = mlm.attention(blanked)
    mlm_blank = fill_blanks(mlm_maps.logits[0], blanked, mask, k)[0]
    gpt_maps = gpt.attention(ids)
    if position == 0:
        gpt_blank = Blank(0, [], [])        # nothing to its left: a GPT has no guess for the first token
    else:
        lp = log_softmax(gpt_maps.logits[0, position - 1].astype(np.float64))
        top = np.argsort(-lp, kind="stable")[:k]
        gpt_blank = Blank(position, top.tolist(), np.exp(lp[top]).tolist())
    gpt_loss = gpt.score(gpt.tokenizer.decode(ids)).mean_nll
    ordinary = np.array([i for i in range(gpt.vocab_size) if i not in gpt.tokenizer.special_ids])
    inputs, targets = mask_tokens(np.array([ids]), np.random.default_rng(LOSS_SEED), mask, ordinary)
    lp = log_softmax(mlm.logits(inputs)[0].astype(np.float64))
    where = np.flatnonzero(targets[0] >= 0)
    mlm_loss = float(-lp[where, targets[0, where]].mean())
    gpt_writes, cache = [], None
    context = ids[-(gpt.block_size - n_write):] if len(ids) + n_write > gpt.block_size else ids
    logits, cache = gpt.next_logits(context)
    for _ in range(n_write):
        tok = int(np.argmax(logits))
        gpt_writes.append(tok)
        if len(gpt_writes) < n_write:
            logits, cache = gpt.next_logits([tok], cache)
    mlm_writes = unmask_left_to_right(lambda seq: mlm.logits(seq)[0], ids, mask, n_write, mlm.block_size,
                                      trailing=blanks_ahead)
    gpt_map, mlm_map = gpt_maps.probs[layer][0, head], mlm_maps.probs[layer][0, head]
    return SideBySide(ids, position, gpt_map, mlm_map, future_weight(gpt_map), future_weight(mlm_map), mlm_blank,
                      gpt_blank, gpt_loss, mlm_loss, len(where), gpt_writes, mlm_writes)
