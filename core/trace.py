"""Trace: a step-by-step generation a person drives, with branches, that survives a reload.

Holds `Trace`: a prompt, generation settings (sampler, seed) and named branches of tokens with a
cursor. `step()` samples (or takes the greedy choice) at the cursor, `force()` takes a token the user
picked, `back()` / `forward()` move the cursor, and choosing a different token where the branch
already continues forks a new branch (the old one is kept); `fork()` and `switch()` do it by hand.
Each step draws its randomness from (seed, absolute position), so replaying a trace, or restoring it
from JSON or a URL string, continues exactly as the original would have.

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

from core import sampling
from core.generate import Context, GenerationConfig, LogitsSource, Step, make_step, next_choice
from core.sampling import PipelineResult, SamplerConfig

FORMAT = 1


@dataclass
class Branch:
    name: str
    tokens: list[int] = field(default_factory=list)     # generated tokens, after the prompt
    forced: list[int] = field(default_factory=list)     # indices (into tokens) the user chose
    parent: str | None = None
    fork_at: int = 0                                    # tokens shared with the parent


class Trace:
    def __init__(self, source: LogitsSource, prompt: str, config: GenerationConfig = GenerationConfig()):
        self.source = source
        self.prompt = prompt
        self.config = config.check()
        self.prompt_ids = source.tokenizer.encode(prompt) if prompt else []
        if not self.prompt_ids:
            raise ValueError("the prompt is empty; type some text to start from")
        self.branches: dict[str, Branch] = {"main": Branch("main")}
        self.current = "main"
        self.cursor = 0
        self._ctx: Context | None = None          # cache for the ids in view; never serialized

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

    def _context(self) -> Context:
        ids = self.ids
        if self._ctx is None or self._ctx.ids != ids:
            if self._ctx is not None and self._ctx.ids == ids[:-1]:
                self._ctx.push(ids[-1])                # the common case: one more token
            else:
                self._ctx = Context(self.source, ids)
        return self._ctx

    def distribution(self) -> PipelineResult:
        """Every stage's distribution for the next token at the cursor (what the stepper shows)."""
        ctx = self._context()
        return sampling.run_pipeline(ctx.logits, self.config.sampler, ctx.ids, ctx.ids[len(self.prompt_ids):])

    def steps(self) -> list[Step]:
        """A Step record for every token in view (probabilities, alternatives, forced or not)."""
        return self.view()[0]

    def view(self) -> tuple[list[Step], PipelineResult]:
        """The records of the tokens in view and every stage's distribution for the next token, from
        one pass over the text when it fits the context (what a page redraws after each click)."""
        ids = self.ids
        n_prompt = len(self.prompt_ids)
        if len(ids) <= self.source.block_size:
            all_logits = self.source.step(np.asarray([ids]))[0][0]    # every position's logits at once
            rows, slid = list(all_logits[n_prompt - 1:]), [False] * (len(ids) - n_prompt + 1)
        else:                                                          # longer than the context: replay
            ctx = Context(self.source, self.prompt_ids)
            rows, slid = [ctx.logits], [ctx.slid]
            for token in self.tokens:
                ctx.push(token)
                rows.append(ctx.logits)
                slid.append(ctx.slid)
        forced = set(self.branch.forced)
        cfg = dataclasses.replace(self.config, keep_stages=False)
        out: list[Step] = []
        for i, token in enumerate(self.tokens):
            p = n_prompt + i
            processed, _ = next_choice(rows[i], cfg, ids[:p], ids[n_prompt:p])
            step = make_step(self.source, rows[i], processed, token, i, p, cfg.top_n, forced=i in forced)
            step.window_slid = slid[i]
            out.append(step)
        return out, sampling.run_pipeline(rows[-1], self.config.sampler, ids, ids[n_prompt:])

    # -- moves -----------------------------------------------------------------------------------------
    def step(self, greedy: bool = False) -> int:
        """Choose the next token at the cursor (sampled with the trace's seed, or greedy) and take it."""
        ctx = self._context()
        cfg = self.config
        if greedy:
            cfg = dataclasses.replace(cfg, sampler=dataclasses.replace(cfg.sampler, temperature=0.0))
        processed, _ = next_choice(ctx.logits, cfg, ctx.ids, ctx.ids[len(self.prompt_ids):])
        token = sampling.choose(processed, None if cfg.sampler.greedy else sampling.position_rng(cfg.seed, len(ctx.ids)))
        self._take(token, forced=False)
        return token

    def run(self, n: int, greedy: bool = False) -> list[int]:
        if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= self.config.max_new_tokens:
            raise ValueError(f"n must be an integer in [1, {self.config.max_new_tokens}], got {n!r}")
        return [self.step(greedy) for _ in range(n)]

    def force(self, token_id: int) -> None:
        """Take `token_id` next, whatever the sampler would say (a click on a candidate)."""
        if isinstance(token_id, bool) or not isinstance(token_id, (int, np.integer)) \
                or not 0 <= token_id < self.source.vocab_size:
            raise ValueError(f"token id must be an integer in [0, {self.source.vocab_size - 1}], got {token_id!r}")
        self._take(int(token_id), forced=True)

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
        if name in self.branches:
            raise ValueError(f"a branch named {name!r} exists already")
        src = self.branch
        self.branches[name] = Branch(name, src.tokens[: self.cursor], [i for i in src.forced if i < self.cursor],
                                     src.name, self.cursor)
        self.current = name
        return name

    def switch(self, name: str) -> None:
        if name not in self.branches:
            raise ValueError(f"no branch named {name!r}; branches: {', '.join(self.branches)}")
        self.current = name
        self.cursor = len(self.branch.tokens)

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
    def from_dict(cls, source: LogitsSource, d: dict) -> "Trace":
        try:
            if d.get("format") != FORMAT:
                raise ValueError(f"unknown trace format {d.get('format')!r}")
            c = d["config"]
            cfg = GenerationConfig(max_new_tokens=c["max_new_tokens"], seed=c["seed"], stop=tuple(c["stop"]),
                                   stop_at_eos=c["stop_at_eos"], top_n=c["top_n"],
                                   sampler=SamplerConfig.from_dict(c["sampler"]))
            trace = cls(source, d["prompt"], cfg)
            trace.branches = {b["name"]: Branch(**b) for b in d["branches"]}
            for b in trace.branches.values():
                source.tokenizer.check_ids(b.tokens)
            trace.switch(d["current"])
            cursor = d["cursor"]
            if not isinstance(cursor, int) or not 0 <= cursor <= len(trace.branch.tokens):
                raise ValueError(f"cursor {cursor!r} is outside the branch")
            trace.cursor = cursor
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"this saved generation cannot be restored ({e}); start a new one") from e
        return trace

    def to_url(self) -> str:
        """A compact string for a share link (zlib-compressed JSON, base64url)."""
        raw = json.dumps(self.to_dict(), separators=(",", ":")).encode()
        return base64.urlsafe_b64encode(zlib.compress(raw, 9)).decode().rstrip("=")

    @classmethod
    def from_url(cls, source: LogitsSource, s: str, max_bytes: int = 1 << 20) -> "Trace":
        try:
            packed = base64.urlsafe_b64decode(s + "=" * (-len(s) % 4))
            raw = zlib.decompressobj().decompress(packed, max_bytes)   # bounded: no zip bombs
            d = json.loads(raw)
        except (ValueError, zlib.error) as e:
            raise ValueError(f"the link's generation state is damaged ({type(e).__name__}); start a new one") from e
        return cls.from_dict(source, d)


def replay(source: LogitsSource, prompt: str, config: GenerationConfig, tokens: Sequence[int]) -> Trace:
    """A trace holding `tokens` on its main branch (e.g. a finished decode, to step on from there)."""
    t = Trace(source, prompt, config)
    t.branch.tokens = list(tokens)
    t.cursor = len(tokens)
    return t
