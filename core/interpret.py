"""Interpret: instruments for looking inside an exported model, on onnxruntime and numpy alone.

Holds `Inspector` (a model's inspection graphs, inspect.onnx and lens.onnx, opened once they are known to
exist and the model and prompt are within this server's limits; `run` is one edited forward pass of a
batch, `lens` the unembedding of residual rows) and the instruments built on it, each returning a
dataclass of numpy arrays:
  logit_lens     the top tokens the residual stream would predict at every point x position;
  ablate_heads   each head removed in turn (zeroed, or replaced by its mean over the prompt's positions):
                 the target token's logprob, a layer x head map; `ablate` removes a chosen set together;
  patch          activation patching: each head's output, and the residual stream entering each layer at
                 each position, taken from a clean run into a corrupted one, and the logit difference of
                 two answers that comes back;
  head_scores    previous-token, duplicate-token and induction scores of every head, from attention.onnx's
                 patterns on any text (`repeated_tokens` makes the classic repeated random sequence).
The edits are `core.model.Intervention`'s blend, mix * x + (1 - mix) * value, exported: mix 1 is the
identity, exactly, so "ablate nothing" and "patch clean into clean" change nothing.

The residual stream is read at 2L + 1 points (`Inspector.points`): 0 enters block 0 (the embeddings),
2l + 1 follows block l's attention, 2l + 2 follows block l (its MLP), and the last one enters the final
norm, so the lens there is the model's own logits. Batched scans run their (L x heads + 1) or
((L + 1) x T) edited passes a few rows per call, as many as `Limits.inspect_batch_mb` allows, and keep only
the row they need of each; the lens reduces every row to its top tokens and a few targets inside the
graph, never returning a (rows, vocab) matrix.

Errors are `InterpretError`s (a `PlaygroundError`): a model exported before the inspection graphs existed
(`InspectionMissingError`, saying how to add them), one larger than this server inspects
(`TooLargeError`, naming the limit), prompts of different token lengths for patching
(`LengthMismatchError`, with the lengths and the fix, `pad_to_same_length`), an out-of-range layer, head,
position or token.

Deliberately not here: torch (the references these are checked against live in tests/test_interpret.py),
widgets and figures (playground/inside.py), running the model's other graphs (`core.runtime`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from core import checks, measures
from core.catalog import INSPECT_FILE, INSPECT_OUTPUTS, INSPECTION_CARD_KEY, LENS_FILE, LENS_OUTPUTS
from core.checks import PlaygroundError
from core.limits import Limits
from core.runtime import Model, ModelError

ABLATIONS = ("zero", "mean")


class InterpretError(PlaygroundError):
    """An inspection cannot be run as asked; the message says what to change."""


class InspectionMissingError(InterpretError):
    """The model was exported before the inspection graphs existed."""


class TooLargeError(InterpretError):
    """The model or the prompt is larger than this server inspects."""


class LengthMismatchError(InterpretError):
    """Clean and corrupted prompts of different token lengths: patching pairs their positions one to one."""

    def __init__(self, message: str, clean: int, corrupt: int):
        super().__init__(message)
        self.clean, self.corrupt = clean, corrupt


def _missing_message(model: Model) -> str:
    name = model.directory.name
    return (f"{name} was exported before the inspection graph existed: export it again (python -m core.export "
            f"RUN_DIR exported/{name}), or add just the inspection graphs to it: python -m core.export "
            f"--add-inspection exported/{name}")


# -- results ---------------------------------------------------------------------------------------

@dataclass
class LensRows:
    """The lens on N residual rows."""
    top_ids: np.ndarray          # (N, k) int64, most likely first
    top_logprobs: np.ndarray     # (N, k)
    target_logits: np.ndarray    # (N, M): the logits of the targets asked for
    target_logprobs: np.ndarray  # (N, M)
    entropy: np.ndarray          # (N,) nats


@dataclass
class LogitLens:
    tokens: list[int]
    points: list[str]            # P = 2L + 1 names, see Inspector.points
    top_ids: np.ndarray          # (P, T, k)
    top_probs: np.ndarray        # (P, T, k)
    entropy: np.ndarray          # (P, T) nats
    next_logprob: np.ndarray     # (P, T): logprob of the token that follows in the text (NaN at the last)


@dataclass
class HeadAblation:
    tokens: list[int]
    kind: str                    # "zero" or "mean" (each head's mean output over this prompt's positions)
    position: int                # where the target's logprob is read (0-based)
    target: int                  # the token whose logprob is measured
    baseline: float              # its logprob with nothing ablated
    logprob: np.ndarray          # (L, nh): its logprob with that one head ablated

    @property
    def effect(self) -> np.ndarray:
        """(L, nh): change of the target's logprob when the head is removed (negative: the head helped)."""
        return self.logprob - self.baseline


@dataclass
class Ablation:
    heads: list[tuple[int, int]]
    kind: str
    position: int
    target: int
    baseline: float              # the target's logprob with nothing ablated
    logprob: float               # with every head in `heads` ablated together


@dataclass
class Patching:
    clean: list[int]
    corrupt: list[int]
    answer: int                  # the logit difference is logit(answer) - logit(wrong) at the last position
    wrong: int
    clean_diff: float
    corrupt_diff: float
    heads: np.ndarray            # (L, nh): the difference with that head's output patched in at every position
    resid: np.ndarray            # (L + 1, T): with the stream entering block l (L: the final norm) at position t

    def recovered(self, diff: np.ndarray) -> np.ndarray:
        """(diff - corrupt) / (clean - corrupt): 0 nothing came back, 1 all of it; NaN when the two runs'
        differences are equal (nothing to recover)."""
        span = self.clean_diff - self.corrupt_diff
        if abs(span) < 1e-6:
            return np.full(diff.shape, np.nan)
        return (diff - self.corrupt_diff) / span

    @property
    def heads_recovered(self) -> np.ndarray:
        return self.recovered(self.heads)

    @property
    def resid_recovered(self) -> np.ndarray:
        return self.recovered(self.resid)


@dataclass
class HeadScores:
    tokens: list[int]
    previous: np.ndarray         # (L, nh): mean attention from each position to the one before it
    duplicate: np.ndarray        # (L, nh): mean attention to earlier occurrences of the same token
    induction: np.ndarray        # (L, nh): mean attention to the tokens that followed earlier occurrences
    repeats: int                 # positions whose token occurred before (duplicate and induction average
                                 # over these; NaN scores when there are none)


# -- the graphs ------------------------------------------------------------------------------------

class Inspector:
    """A model's inspection graphs, ready to run within `limits`. Cheap to make: the sessions are the
    Model's, opened once per process and shared."""

    def __init__(self, model: Model, limits: Limits | None = None):
        self.model = model
        self.limits = limits or Limits()
        entry = model.card.get(INSPECTION_CARD_KEY)
        if not entry:
            raise InspectionMissingError(_missing_message(model))
        cap = self.limits.max_inspect_parameters
        n = (model.card.get("parameters") or {}).get("total") or 0
        if cap and n > cap:
            raise TooLargeError(f"{model.name} has {n:,} parameters; this server inspects models of at most "
                                f"{cap:,} (Limits.max_inspect_parameters): choose a smaller model, or run the "
                                f"playground on your own machine")
        cfg = model.config
        self.n_layer, self.n_head, self.head_dim, self.n_embd = cfg.n_layer, cfg.n_head, cfg.head_dim, cfg.n_embd
        self.top_k = int(entry["lens_top_k"])
        try:
            self._inspect = model.graph_session(INSPECT_FILE)
            self._lens = model.graph_session(LENS_FILE)
        except ModelError as e:
            raise InspectionMissingError(f"{_missing_message(model)} ({e})") from e

    @property
    def points(self) -> list[str]:
        """Names of the residual stream's 2L + 1 points."""
        mlp = "mlp" if self.model.config.mlp != "none" else "out"
        return ["embed"] + [f"L{l} {part}" for l in range(self.n_layer) for part in ("attn", mlp)]

    @property
    def max_tokens(self) -> int:
        return min(self.model.block_size, self.limits.max_inspect_tokens)

    def check_ids(self, ids, what: str = "the prompt") -> np.ndarray:
        """One sequence of token ids as int64 (T,), within the model's ids and the server's length."""
        try:
            arr = self.model.check_ids(ids)
        except ModelError as e:
            raise InterpretError(str(e)) from e
        if arr.shape[0] != 1:
            raise InterpretError(f"{what} must be one sequence of token ids, got a batch of {arr.shape[0]}")
        if arr.shape[1] > self.max_tokens:
            why = ("the model's context" if self.max_tokens == self.model.block_size
                   else "Limits.max_inspect_tokens, what this server inspects at once")
            raise TooLargeError(f"{what} has {arr.shape[1]} tokens; at most {self.max_tokens} ({why}): shorten it")
        return arr[0]

    def check_layer(self, layer) -> int:
        return checks.integer("layer", layer, 0, self.n_layer - 1, error=InterpretError)

    def check_head(self, layer, head) -> tuple[int, int]:
        return self.check_layer(layer), checks.integer("head", head, 0, self.n_head - 1, error=InterpretError)

    def check_token(self, name: str, token) -> int:
        return checks.integer(name, token, 0, self.model.vocab_size - 1, error=InterpretError)

    def check_position(self, position, T: int) -> int:
        p = checks.integer("position", position, -T, T - 1, error=InterpretError)
        return p % T

    def _rows_per_call(self, T: int) -> int:
        """Rows of one inspect.onnx call within Limits.inspect_batch_mb: its outputs and the activations it
        keeps alive (attention maps, the MLP's hidden layer) grow with batch x T."""
        L, C = self.n_layer, self.n_embd
        per_row = 4 * T * ((2 * L + 1) * C + 2 * L * C + 4 * C + self.n_head * T)
        return max(1, int(self.limits.inspect_batch_mb * 2 ** 20 // per_row))

    def run(self, ids, head_mix: np.ndarray | None = None, head_value: np.ndarray | None = None,
            resid_mix: np.ndarray | None = None, resid_value: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """One edited forward pass per row of the mixes: resid (B, T, 2L + 1, C) and head_z (B, T, L, nh, hs).

        head_mix (B, T, L, nh) and resid_mix (B, T, L + 1) default to ones (no edit); the values (T, L, nh, hs)
        and (T, L + 1, C), one for every row, to zeros. See `core.model.Intervention`."""
        ids = self.check_ids(ids)
        T, L, nh = len(ids), self.n_layer, self.n_head
        B = next((m.shape[0] for m in (head_mix, resid_mix) if m is not None), 1)
        head_mix = np.ones((B, T, L, nh), np.float32) if head_mix is None else head_mix
        resid_mix = np.ones((B, T, L + 1), np.float32) if resid_mix is None else resid_mix
        if head_mix.shape != (B, T, L, nh) or resid_mix.shape != (B, T, L + 1):
            raise InterpretError(f"the mixes must be (B, {T}, {L}, {nh}) and (B, {T}, {L + 1}); got "
                                 f"{head_mix.shape} and {resid_mix.shape}")
        feeds = self._values(T, head_value, resid_value)
        out_r, out_z = [], []
        step = self._rows_per_call(T)
        for s in range(0, B, step):
            n = min(step, B - s)
            r, z = self._call(np.broadcast_to(ids, (n, T)), head_mix[s:s + n], resid_mix[s:s + n], feeds)
            out_r.append(r)
            out_z.append(z)
        return np.concatenate(out_r), np.concatenate(out_z)

    def _values(self, T: int, head_value, resid_value) -> dict:
        L, nh, hs, C = self.n_layer, self.n_head, self.head_dim, self.n_embd
        hv = np.zeros((T, L, nh, hs), np.float32) if head_value is None else np.asarray(head_value, np.float32)
        rv = np.zeros((T, L + 1, C), np.float32) if resid_value is None else np.asarray(resid_value, np.float32)
        if hv.shape != (T, L, nh, hs) or rv.shape != (T, L + 1, C):
            raise InterpretError(f"the values must be ({T}, {L}, {nh}, {hs}) and ({T}, {L + 1}, {C}); got "
                                 f"{hv.shape} and {rv.shape}")
        return {"head_value": np.ascontiguousarray(hv[None]), "resid_value": np.ascontiguousarray(rv[None])}

    def _call(self, ids: np.ndarray, head_mix: np.ndarray, resid_mix: np.ndarray, values: dict):
        feeds = {"input_ids": np.ascontiguousarray(ids, np.int64), "head_mix": np.ascontiguousarray(head_mix, np.float32),
                 "resid_mix": np.ascontiguousarray(resid_mix, np.float32), **values}
        return self._inspect.run(list(INSPECT_OUTPUTS), feeds)

    def scan(self, ids, rows: Sequence[tuple[Sequence[tuple[int, int]], Sequence[tuple[int, int]]]],
             keep: Callable[[np.ndarray, np.ndarray], np.ndarray], head_value: np.ndarray | None = None,
             resid_value: np.ndarray | None = None) -> np.ndarray:
        """Many edited passes over one sequence, described sparsely: each row is (heads, cells), the (layer,
        head) pairs whose output is replaced by head_value at every position and the (layer, position)
        cells of the residual stream replaced by resid_value; an empty row is the unedited pass. The dense
        mixes are built a call at a time, and `keep(resid, head_z)` reduces each call's outputs to what the
        caller needs (a (n, ...) array); returns their concatenation over the rows."""
        ids = self.check_ids(ids)
        T, L, nh = len(ids), self.n_layer, self.n_head
        values = self._values(T, head_value, resid_value)
        step = self._rows_per_call(T)
        kept = []
        for s in range(0, len(rows), step):
            chunk = rows[s:s + step]
            head_mix = np.ones((len(chunk), T, L, nh), np.float32)
            resid_mix = np.ones((len(chunk), T, L + 1), np.float32)
            for i, (heads, cells) in enumerate(chunk):
                for l, h in heads:
                    head_mix[i, :, l, h] = 0
                for l, t in cells:
                    resid_mix[i, t, l] = 0
            resid, head_z = self._call(np.broadcast_to(ids, (len(chunk), T)), head_mix, resid_mix, values)
            kept.append(keep(resid, head_z))
            del resid, head_z
        return np.concatenate(kept)

    def lens(self, rows: np.ndarray, targets: np.ndarray | None = None) -> LensRows:
        """The final norm and unembedding of residual rows (N, C): the top k tokens (k = the card's
        lens_top_k), the logits and logprobs of `targets` (N, M) ids, and the entropy; N chunked so that no
        call holds more than Limits.inspect_batch_mb of logits."""
        rows = np.asarray(rows, np.float32).reshape(-1, self.n_embd)
        N = rows.shape[0]
        targets = np.zeros((N, 1), np.int64) if targets is None else np.asarray(targets, np.int64).reshape(N, -1)
        step = max(1, int(self.limits.inspect_batch_mb * 2 ** 20 // (16 * self.model.vocab_size)))
        parts = [self._lens.run(list(LENS_OUTPUTS), {"resid": rows[s:s + step], "targets": targets[s:s + step]})
                 for s in range(0, N, step)]
        return LensRows(*(np.concatenate([p[i] for p in parts]) for i in range(len(LENS_OUTPUTS))))


# -- the instruments -------------------------------------------------------------------------------

def logit_lens(model: Model, ids, top_k: int = 5, limits: Limits | None = None) -> LogitLens:
    """What the residual stream would predict at every point and position, read through the final norm and
    the unembedding; at the last point it is the model's own prediction."""
    ins = Inspector(model, limits)
    arr = ins.check_ids(ids)
    k = checks.integer("top_k", top_k, 1, ins.top_k, error=InterpretError)
    resid, _ = ins.run(arr)
    T, P = len(arr), resid.shape[2]
    following = np.append(arr[1:], 0)                                     # (T,) the next token; a dummy last
    rows = resid[0].transpose(1, 0, 2).reshape(P * T, -1)                 # (P*T, C), point-major
    out = ins.lens(rows, np.tile(following, P)[:, None])
    nxt = out.target_logprobs[:, 0].reshape(P, T).copy()
    nxt[:, -1] = np.nan
    return LogitLens(arr.tolist(), ins.points, out.top_ids[:, :k].reshape(P, T, k),
                     np.exp(out.top_logprobs[:, :k]).reshape(P, T, k), out.entropy.reshape(P, T), nxt)


def _target(ins: Inspector, arr: np.ndarray, target, position) -> tuple[int, int, float]:
    """(position, target, its logprob unedited); the target defaults to the model's top prediction there."""
    pos = ins.check_position(position, len(arr))
    resid, _ = ins.run(arr)
    last = resid[0, pos, -1][None]
    if target is None:
        out = ins.lens(last)
        target = int(out.top_ids[0, 0])
    target = ins.check_token("target", target)
    return pos, target, float(ins.lens(last, np.array([[target]])).target_logprobs[0, 0])


def _mean_z(ins: Inspector, arr: np.ndarray) -> np.ndarray:
    """Each head's output averaged over the prompt's positions, at every position: (T, L, nh, hs)."""
    _, z = ins.run(arr)
    return np.broadcast_to(z[0].mean(axis=0, keepdims=True), z[0].shape)


def ablate_heads(model: Model, ids, target: int | None = None, position: int = -1, kind: str = "zero",
                 limits: Limits | None = None) -> HeadAblation:
    """Remove each head in turn (its output zeroed, or replaced by its mean over this prompt's positions, at
    every position) and read the target token's logprob at `position` (default: the last; the target
    defaults to the model's own top prediction there). L x nh + 1 passes, batched."""
    ins = Inspector(model, limits)
    arr = ins.check_ids(ids)
    kind = checks.choice("kind", kind, ABLATIONS, error=InterpretError)
    pos, target, baseline = _target(ins, arr, target, position)
    cells = [(l, h) for l in range(ins.n_layer) for h in range(ins.n_head)]
    value = _mean_z(ins, arr) if kind == "mean" else None
    final = ins.scan(arr, [((cell,), ()) for cell in cells], lambda r, z: r[:, pos, -1], head_value=value)
    lp = ins.lens(final, np.full((len(cells), 1), target)).target_logprobs[:, 0]
    return HeadAblation(arr.tolist(), kind, pos, target, baseline, lp.reshape(ins.n_layer, ins.n_head))


def ablate(model: Model, ids, heads: Sequence[tuple[int, int]], target: int | None = None, position: int = -1,
           kind: str = "zero", limits: Limits | None = None) -> Ablation:
    """Remove the given (layer, head) pairs together and read the target's logprob (as `ablate_heads`)."""
    ins = Inspector(model, limits)
    arr = ins.check_ids(ids)
    kind = checks.choice("kind", kind, ABLATIONS, error=InterpretError)
    heads = [ins.check_head(l, h) for l, h in heads]
    pos, target, baseline = _target(ins, arr, target, position)
    value = _mean_z(ins, arr) if kind == "mean" else None
    final = ins.scan(arr, [(heads, ())], lambda r, z: r[:, pos, -1], head_value=value)
    lp = float(ins.lens(final, np.array([[target]])).target_logprobs[0, 0])
    return Ablation(heads, kind, pos, target, baseline, lp)


def pad_to_same_length(clean: Sequence[int], corrupt: Sequence[int], pad: int) -> tuple[list[int], list[int]]:
    """The fix for prompts of different token lengths: the shorter one left-padded with `pad` tokens, so
    that the two end together (where the logit difference is read)."""
    n = max(len(clean), len(corrupt))
    return [pad] * (n - len(clean)) + list(clean), [pad] * (n - len(corrupt)) + list(corrupt)


def pad_token(model: Model) -> int:
    """The id padding uses: a space when it is one token, else id 0."""
    ids = model.tokenizer.encode(" ")
    return ids[0] if len(ids) == 1 else 0


def single_token(model: Model, text: str, what: str = "answer") -> int:
    """The id of `text` as exactly one token (an answer of the logit difference), or a message saying how it
    splits."""
    ids = model.tokenizer.encode(text)
    if len(ids) != 1:
        pieces = " + ".join(repr(model.tokenizer.token_text(i)) for i in ids) or "no token"
        raise InterpretError(f"the {what} {text!r} is {len(ids)} tokens ({pieces}); the logit difference compares "
                             f"two single tokens: choose a text that is one token of this model's tokenizer")
    return ids[0]


def patch(model: Model, clean, corrupt, answer: int, wrong: int, limits: Limits | None = None) -> Patching:
    """Activation patching at the last position's logit difference logit(answer) - logit(wrong): run the
    corrupted prompt with one head's output (at every position) or the residual stream entering one layer at
    one position taken from the clean run, for every head and every (layer, position): L x nh + (L + 1) x T'
    passes, T' the positions from the first one where the prompts differ (before it, patching changes nothing)."""
    ins = Inspector(model, limits)
    c = ins.check_ids(clean, "the clean prompt")
    x = ins.check_ids(corrupt, "the corrupted prompt")
    if len(c) != len(x):
        raise LengthMismatchError(
            f"the clean prompt is {len(c)} tokens and the corrupted one {len(x)}: patching moves position t of one "
            f"run into position t of the other, so both need the same number of tokens. Change a word so the "
            f"counts match, or left-pad the shorter prompt (pad_to_same_length; the page's 'pad' option)",
            len(c), len(x))
    answer, wrong = ins.check_token("answer", answer), ins.check_token("wrong", wrong)
    T, L, nh = len(c), ins.n_layer, ins.n_head
    targets = np.array([[answer, wrong]])

    def diff(final: np.ndarray) -> np.ndarray:                # (n, C) last-position rows -> (n,)
        lg = ins.lens(final, np.repeat(targets, len(final), 0)).target_logits
        return lg[:, 0] - lg[:, 1]
    clean_resid, clean_z = ins.run(c)
    corrupt_resid, _ = ins.run(x)
    clean_diff, corrupt_diff = diff(clean_resid[:, -1, -1])[0], diff(corrupt_resid[:, -1, -1])[0]

    def last(resid: np.ndarray, head_z: np.ndarray) -> np.ndarray:
        return resid[:, -1, -1]                                # the last position, entering the final norm
    heads = ins.scan(x, [(((l, h),), ()) for l in range(L) for h in range(nh)], last, head_value=clean_z[0])
    # before the first token where the prompts differ the two streams are the same (attention is causal):
    # patching there changes nothing, so those (L + 1) x first runs are not made
    first = int(np.argmax(c != x)) if (c != x).any() else T
    resid = np.full((L + 1, T), corrupt_diff, np.float32)
    if first < T:
        cells = [(l, t) for l in range(L + 1) for t in range(first, T)]
        finals = ins.scan(x, [((), (cell,)) for cell in cells], last, resid_value=clean_resid[0][:, ::2])
        resid[:, first:] = diff(finals).reshape(L + 1, T - first)
    return Patching(c.tolist(), x.tolist(), answer, wrong, float(clean_diff), float(corrupt_diff),
                    diff(heads).reshape(L, nh), resid)


def repeated_tokens(model: Model, n: int, seed: int = 0) -> list[int]:
    """n random token ids, then the same n again: the sequence on which induction heads show (in the second
    half, attention to the token after the current one's first occurrence)."""
    n = checks.integer("n", n, 2, model.block_size // 2, error=InterpretError)
    return measures.repeated_tokens(model.vocab_size, n, 1, np.random.default_rng(seed))[0].tolist()


def head_scores(model: Model, ids, limits: Limits | None = None) -> HeadScores:
    """Each head's previous-token, duplicate-token and induction score on `ids`, from its attention pattern
    (attention.onnx: models exported before the inspection graphs have it too), by `core.measures`'
    definitions, which the trainer logs too. For a position t whose token occurred before at s < t: duplicate
    is the attention on those s, induction the attention on those s + 1 (< t); previous-token is the
    attention on t - 1; each averaged over the positions where it is defined."""
    lim = limits or Limits()
    try:
        arr = model.check_ids(ids)[0]
    except ModelError as e:
        raise InterpretError(str(e)) from e
    most = min(model.block_size, lim.max_inspect_tokens)
    if len(arr) > most:
        raise TooLargeError(f"the text has {len(arr)} tokens; head scores take at most {most} "
                            f"(the context, or Limits.max_inspect_tokens): shorten it")
    if len(arr) < 2:
        raise InterpretError("head scores need at least 2 tokens")
    probs = np.stack([p[0] for p in model.attention(arr).probs])          # (L, nh, T, T)
    scores = measures.head_scores(probs, arr)
    repeats = sum(int(arr[t] in arr[:t]) for t in range(len(arr)))
    return HeadScores(arr.tolist(), scores["previous_token"], scores["duplicate"], scores["induction"], repeats)
