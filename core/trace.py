"""Trace: a step-by-step generation a person drives, with branches, that survives a reload.

Holds `Trace`: a prompt, generation settings (sampler, seed) and named branches of tokens with a
cursor. `step()` samples (or takes the greedy choice) at the cursor, `force()` takes a token the user
picked, `back()` / `forward()` move the cursor, and choosing a different token where the branch
already continues forks a new branch (the old one is kept); `fork()` and `switch()` do it by hand, and
`continue_with(position, token)` does it at any earlier token (a loom: `tree()` is the outline of the
branches, each under its parent where it forked).
Each step draws its randomness from (seed, absolute position), so replaying a trace, or restoring it
from JSON or a URL string, continues exactly as the original would have.

A live trace keeps the KV cache at its cursor and a record per token in view, built as the cache
advances: a step costs one decode step, a move back one prefill of the shared prefix, and nothing
already computed is computed again (a page keeps the live trace in the visitor's session).

Deliberately not here: the model (any `core.generate` source), the stages' math (`core.sampling`),
rendering (the pages).
"""

from __future__ import annotations

import base64
import dataclasses
import json
import zlib
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from core import checks, sampling
from core.generate import (Context, GenerationConfig, GenerationError, LogitsSource, Step, check_prompt, make_step,
                           next_choice)
from core.limits import Limits
from core.sampling import PipelineResult, SamplerConfig

FORMAT = 1
MAX_SAVED_BYTES = 1 << 20       # a saved trace (a link's, decompressed, or a loom file) is a few kB: more is not ours


@dataclass
class Branch:
    name: str
    tokens: list[int] = field(default_factory=list)     # generated tokens, after the prompt
    forced: list[int] = field(default_factory=list)     # indices (into tokens) the user chose
    parent: str | None = None
    fork_at: int = 0                                    # tokens shared with the parent


@dataclass(frozen=True)
class BranchNode:
    """One branch in the loom's outline (`Trace.tree`)."""
    name: str
    parent: str | None
    fork_at: int            # generated tokens it shares with its parent
    depth: int              # 0 for main, 1 for its children...
    length: int             # its generated tokens
    added: str              # the text of its tokens after the fork


class Trace:
    def __init__(self, source: LogitsSource, prompt: str, config: GenerationConfig = GenerationConfig(),
                 limits: Limits = Limits()):
        self.source, self.limits = source, limits
        self.prompt = check_prompt(prompt, limits)
        self.config = config.check(limits)
        self.prompt_ids = source.tokenizer.encode_prompt(prompt) if prompt else []
        if not self.prompt_ids:
            raise GenerationError("the prompt is empty; type some text to start from")
        self.branches: dict[str, Branch] = {"main": Branch("main")}
        self.current = "main"
        self.cursor = 0
        self._ctx: Context | None = None          # the KV cache at the ids in view; never serialized
        self._records: list[Step] = []            # a record per token in view, built as the cache advances
        self._key = None                          # the settings those records were made with

    # -- what is in view -----------------------------------------------------------------------------
    @property
    def branch(self) -> Branch:
        return self.branches[self.current]

    @property
    def tokens(self) -> list[int]:
        return self.branch.tokens[: self.cursor]

    @property
    def ids(self) -> list[int]:
        return self.prompt_ids + self.tokens

    @property
    def text(self) -> str:
        return self.prompt + bytes(b"".join(self.source.tokenizer.token_bytes(t) for t in self.tokens)).decode(
            "utf-8", errors="replace")

    # -- the live state: the KV cache at the cursor, and the records of the tokens in view -------------
    def _sync(self) -> Context:
        """The context at the ids in view, and a record for each token in view, with as few model calls as
        the last move allows: a step or a move forward is one cached decode step, a move back or to a
        branch one prefill of the shared prefix; the records of tokens already seen are kept. Knobs that
        change the records (the sampler, top-n) rebuild them in one pass over the text."""
        ids, n_prompt = self.ids, len(self.prompt_ids)
        key = (self.config.sampler, self.config.top_n)
        ctx = self._ctx if self._key == key else None
        if ctx is not None and ctx.ids == ids:
            return ctx
        if ctx is not None:
            common = _common_prefix(ctx.ids, ids)
            if common < n_prompt or (common < len(ctx.ids) and common > self.source.block_size):
                ctx = None                         # past the context the window slid: only a replay is exact
            elif common < len(ctx.ids):            # back, or onto another branch: the shared prefix again
                ctx = Context(self.source, ids[:common])
            del self._records[common - n_prompt:]
        if ctx is None:
            ctx, self._records = self._rebuild(ids)
            self._key = key
        for token in ids[len(ctx.ids):]:
            self._records.append(self._record(ctx, token))
            ctx.push(token)
        self._ctx = ctx
        return ctx

    def _rebuild(self, ids: list[int]) -> tuple[Context, list[Step]]:
        """Every record of the tokens in view: from one pass over the text when it fits the context, else
        by replaying it token by token (the window slides as it did when the tokens were drawn)."""
        n_prompt = len(self.prompt_ids)
        if len(ids) > self.source.block_size:
            ctx, records = Context(self.source, self.prompt_ids), []
            for token in ids[n_prompt:]:
                records.append(self._record(ctx, token))
                ctx.push(token)
            return ctx, records
        all_logits, cache = self.source.step(np.asarray([ids]))     # every position's logits at once
        rows = all_logits[0][n_prompt - 1:]
        records = [self._record_of(rows[i], ids[:n_prompt + i], token, slid=False)
                   for i, token in enumerate(ids[n_prompt:])]
        return Context.from_prefill(self.source, ids, rows[-1], cache), records

    def _record(self, ctx: Context, token: int, processed: np.ndarray | None = None) -> Step:
        return self._record_of(ctx.logits, ctx.ids, token, ctx.slid, processed)

    def _record_of(self, logits: np.ndarray, history: list[int], token: int, slid: bool,
                   processed: np.ndarray | None = None) -> Step:
        """The record of `token` drawn after `history` from `logits` (unforced: forced marks are the
        branch's); `processed`: the trace's own sampler's logits, when the caller has them already."""
        n_prompt, p = len(self.prompt_ids), len(history)
        if processed is None:
            processed, _ = next_choice(logits, self._plain(), history, history[n_prompt:])
        step = make_step(self.source, logits, processed, token, p - n_prompt, p, self.config.top_n)
        step.window_slid = slid
        return step

    def _plain(self) -> GenerationConfig:
        return dataclasses.replace(self.config, keep_stages=False)

    def distribution(self) -> PipelineResult:
        """Every stage's distribution for the next token at the cursor (what the stepper shows)."""
        ctx = self._sync()
        return sampling.run_pipeline(ctx.logits, self.config.sampler, ctx.ids, ctx.ids[len(self.prompt_ids):],
                                     seed=self.config.seed)

    def steps(self) -> list[Step]:
        """A Step record for every token in view (probabilities, alternatives, forced or not)."""
        self._sync()
        forced = set(self.branch.forced)
        return [dataclasses.replace(r, forced=i in forced) for i, r in enumerate(self._records)]

    def view(self) -> tuple[list[Step], PipelineResult]:
        """The records of the tokens in view and every stage's distribution for the next token (what a
        page redraws after each click)."""
        return self.steps(), self.distribution()

    # -- moves -----------------------------------------------------------------------------------------
    def step(self, greedy: bool = False) -> int:
        """Choose the next token at the cursor (sampled with the trace's seed, or greedy) and take it."""
        ctx = self._sync()
        cfg = self._plain()
        if greedy:
            cfg = dataclasses.replace(cfg, sampler=dataclasses.replace(cfg.sampler, temperature=0.0))
        processed, _ = next_choice(ctx.logits, cfg, ctx.ids, ctx.ids[len(self.prompt_ids):])
        token = sampling.choose(processed, None if cfg.sampler.greedy else sampling.position_rng(cfg.seed, len(ctx.ids)))
        # the record of the token drawn, from the distribution it was drawn from (no second pass over the
        # sampler's stages); greedy draws under other settings, so its record is made as any other's
        record = None if greedy else self._record(ctx, token, processed)
        self._take(token, forced=False)
        if record is not None and self.ids == ctx.ids + [token]:
            self._records.append(record)
            ctx.push(token)
        return token

    def run(self, n: int, greedy: bool = False) -> list[int]:
        checks.integer("n", n, 1, self.config.max_new_tokens, GenerationError)
        return [self.step(greedy) for _ in range(n)]

    def force(self, token_id: int) -> None:
        """Take `token_id` next, whatever the sampler would say (a click on a candidate)."""
        token_id = checks.integer("token id", token_id, 0, self.source.vocab_size - 1, GenerationError)
        self._take(token_id, forced=True)

    def _take(self, token: int, forced: bool) -> None:
        b = self.branch
        if self.cursor < len(b.tokens):
            if b.tokens[self.cursor] == token:
                self.cursor += 1                       # the branch already goes this way: follow it
                return
            self.fork()                                # a different choice: keep the old path
            b = self.branch
        b.tokens.append(token)
        if forced:
            b.forced.append(len(b.tokens) - 1)
        self.cursor = len(b.tokens)

    def back(self) -> None:
        self.cursor = max(0, self.cursor - 1)

    def forward(self) -> None:
        self.cursor = min(len(self.branch.tokens), self.cursor + 1)

    def fork(self, name: str | None = None) -> str:
        """A new branch holding the tokens in view; it becomes current."""
        name = name or self._new_name()
        if len(self.branches) >= self.limits.max_branches:
            raise GenerationError(f"this trace already has {len(self.branches)} branches, the most this server keeps; "
                                  f"switch to one of them and go on from there")
        if name in self.branches:
            raise GenerationError(f"a branch named {name!r} exists already")
        src = self.branch
        self.branches[name] = Branch(name, src.tokens[: self.cursor], [i for i in src.forced if i < self.cursor],
                                     src.name, self.cursor)
        self.current = name
        return name

    def switch(self, name: str) -> None:
        if name not in self.branches:
            raise GenerationError(f"no branch named {name!r}; branches: {', '.join(self.branches)}")
        self.current = name
        self.cursor = len(self.branch.tokens)

    def continue_with(self, position: int, token_id: int) -> None:
        """The loom's move: go back to `position` (the tokens generated before it stay) and take `token_id`
        there. Where the branch already continues with another token, a new branch keeps the old path."""
        position = checks.integer("position", position, 0, len(self.branch.tokens), GenerationError)
        before = self.cursor
        self.cursor = position
        try:
            self.force(token_id)
        except GenerationError:
            self.cursor = before            # refused (e.g. the branch limit): the text in view stays as it was
            raise

    def tree(self) -> list["BranchNode"]:
        """The branches as a tree, depth-first from main: each under its parent at the token where it forked,
        with the text it adds there (the loom's outline)."""
        children: dict[str | None, list[Branch]] = {}
        for b in self.branches.values():
            children.setdefault(b.parent, []).append(b)
        out: list[BranchNode] = []

        def visit(b: Branch, depth: int) -> None:
            added = bytes(b"".join(self.source.tokenizer.token_bytes(t) for t in b.tokens[b.fork_at:]))
            out.append(BranchNode(b.name, b.parent, b.fork_at, depth, len(b.tokens),
                                  added.decode("utf-8", errors="replace")))
            for child in sorted(children.get(b.name, []), key=lambda c: (c.fork_at, c.name)):
                visit(child, depth + 1)
        for root in children.get(None, []):
            visit(root, 0)
        return out

    def _new_name(self) -> str:
        i = len(self.branches)
        while f"b{i}" in self.branches:
            i += 1
        return f"b{i}"

    # -- persistence -------------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        cfg = self.config
        return {"format": FORMAT, "prompt": self.prompt,
                "config": {"max_new_tokens": cfg.max_new_tokens, "seed": cfg.seed, "stop": list(cfg.stop),
                           "stop_at_eos": cfg.stop_at_eos, "top_n": cfg.top_n,
                           "sampler": cfg.sampler.to_dict()},
                "branches": [dataclasses.asdict(b) for b in self.branches.values()],
                "current": self.current, "cursor": self.cursor}

    @classmethod
    def from_dict(cls, source: LogitsSource, d: dict, limits: Limits = Limits()) -> "Trace":
        """A trace from its saved state (a session's, or a shared link's: checked as untrusted input against
        the server's limits, so a link cannot ask for more work than a visitor's clicks could)."""
        try:
            if d.get("format") != FORMAT:
                raise GenerationError(f"unknown trace format {d.get('format')!r}")
            c = d["config"]
            cfg = GenerationConfig(max_new_tokens=c["max_new_tokens"], seed=c["seed"], stop=tuple(c["stop"]),
                                   stop_at_eos=c["stop_at_eos"], top_n=c["top_n"],
                                   sampler=SamplerConfig.from_dict(c["sampler"]))
            trace = cls(source, d["prompt"], cfg, limits)
            if len(d["branches"]) > limits.max_branches:
                raise GenerationError(f"{len(d['branches'])} branches; this server keeps at most {limits.max_branches}")
            trace.branches = {b["name"]: Branch(**b) for b in d["branches"]}
            for b in trace.branches.values():
                checks.integer(f"branch {b.name!r}'s length", len(b.tokens), 0, limits.max_new_tokens, GenerationError)
                source.tokenizer.check_ids(b.tokens)
                if any(not isinstance(i, int) or not 0 <= i < len(b.tokens) for i in b.forced):
                    raise GenerationError(f"branch {b.name!r} marks tokens it does not hold as forced")
                if b.parent is not None and b.parent not in trace.branches or \
                        not isinstance(b.fork_at, int) or not 0 <= b.fork_at <= len(b.tokens):
                    raise GenerationError(f"branch {b.name!r} forks from a branch or place that does not exist")
            trace.switch(d["current"])
            cursor = d["cursor"]
            if not isinstance(cursor, int) or not 0 <= cursor <= len(trace.branch.tokens):
                raise GenerationError(f"cursor {cursor!r} is outside the branch")
            trace.cursor = cursor
        except (KeyError, TypeError, ValueError) as e:      # ValueError: our own errors and json's
            raise GenerationError(f"this saved generation cannot be restored ({e}); start a new one") from e
        return trace

    def to_url(self) -> str:
        """A compact string for a share link (zlib-compressed JSON, base64url)."""
        raw = json.dumps(self.to_dict(), separators=(",", ":")).encode()
        return base64.urlsafe_b64encode(zlib.compress(raw, 9)).decode().rstrip("=")

    @classmethod
    def from_url(cls, source: LogitsSource, s: str, limits: Limits = Limits(), max_bytes: int = MAX_SAVED_BYTES) -> "Trace":
        try:
            packed = base64.urlsafe_b64decode(s + "=" * (-len(s) % 4))
            raw = zlib.decompressobj().decompress(packed, max_bytes)   # bounded: no zip bombs
            d = json.loads(raw)
        except (ValueError, zlib.error) as e:
            raise GenerationError(f"the link's generation state is damaged ({type(e).__name__}); start a new one") from e
        return cls.from_dict(source, d, limits)


def loom_file(trace: Trace, model_name: str) -> str:
    """A trace as a file a person keeps (the Generate page's "Save the loom"): the model it was made with,
    since its token ids mean other text to another model, and the trace with every branch."""
    return json.dumps({"model": model_name, "trace": trace.to_dict()}, indent=1)


def read_loom(source: LogitsSource, raw: bytes, model_name: str, limits: Limits = Limits(),
              file_name: str = "the file") -> Trace:
    """A trace from a saved loom, checked as untrusted input like a shared link; a file from another model,
    too large, not JSON or not a loom is refused with what to do instead."""
    if len(raw) > MAX_SAVED_BYTES:
        raise GenerationError(f"{file_name} is {len(raw):,} bytes; a saved loom is at most {MAX_SAVED_BYTES:,}")
    try:
        saved = json.loads(raw)
        made_with, state = saved["model"], saved["trace"]
    except (ValueError, KeyError, TypeError) as e:
        raise GenerationError(f"{file_name} is not a saved loom ({type(e).__name__}); save one with "
                              f"'Save the loom'") from e
    if made_with != model_name:
        raise GenerationError(f"this loom was made with {made_with!r}: its tokens mean other text to {model_name!r}; "
                              f"pick {made_with!r}, then load it again")
    if not isinstance(state, dict):
        raise GenerationError(f"{file_name} is not a saved loom (its trace is not an object)")
    return Trace.from_dict(source, state, limits)


def _common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def replay(source: LogitsSource, prompt: str, config: GenerationConfig, tokens: Sequence[int]) -> Trace:
    """A trace holding `tokens` on its main branch (e.g. a finished decode, to step on from there)."""
    t = Trace(source, prompt, config)
    t.branch.tokens = list(tokens)
    t.cursor = len(tokens)
    return t
