"""Post-training data: demonstrations (prompt, response) for SFT and preference pairs (prompt, chosen,
rejected) for a reward model and DPO, read from JSONL, written back, and judged by programmatic judges.

A *judge* is a small, visible preference a character model can learn ("shorter lines", "more of a
word", "lines that rhyme"): it scores a text, so pairs labelled by it have a ground truth to check a
reward model against, and a policy's text can be scored by it while PPO or DPO moves the policy.
`distinct_n` measures how repetitive texts have become (reward hacking drives it down).

Deliberately not here: sampling from a model to make pairs and every loss (`core.posttrain`, torch);
this module is pure Python so the pages can read, judge and save data without torch.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import asdict, dataclass
from typing import Callable

from core.checks import PlaygroundError

SFT_FIELDS = ("prompt", "response")
PAIR_FIELDS = ("prompt", "chosen", "rejected")
PROMPT_FIELDS = ("prompt",)             # PPO and GRPO: prompts only, the policy writes the responses
MAX_DATA_BYTES = 20 * 2 ** 20        # an uploaded JSONL larger than this is refused before it is parsed


class DataError(PlaygroundError):
    """Post-training data that cannot be used as it is; the message names the line and field."""


@dataclass(frozen=True)
class Demonstration:
    prompt: str
    response: str


@dataclass(frozen=True)
class PreferencePair:
    prompt: str
    chosen: str
    rejected: str


def fields_of(kind: str) -> tuple[str, ...]:
    if kind == "sft":
        return SFT_FIELDS
    if kind == "pairs":
        return PAIR_FIELDS
    if kind == "prompts":
        return PROMPT_FIELDS
    raise DataError(f"unknown data kind {kind!r}: sft (prompt, response), pairs (prompt, chosen, rejected) or "
                    f"prompts (prompt)")


def read_jsonl(text: str | bytes, kind: str, source: str = "the data") -> list:
    """Demonstrations (kind "sft"), preference pairs (kind "pairs") or prompts (kind "prompts", read as
    demonstrations with no response) from JSON lines. Blank lines are skipped; any other line that is not an
    object with the kind's string fields is refused, with its line number, and so is an empty response, an
    empty prompt where the prompt is all there is, or a pair whose two sides are the same text."""
    fields = fields_of(kind)
    if isinstance(text, bytes):
        if len(text) > MAX_DATA_BYTES:
            raise DataError(f"{source} is {len(text) / 2 ** 20:.1f} MiB; the limit is {MAX_DATA_BYTES / 2 ** 20:.0f} MiB")
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError as e:
            raise DataError(f"{source} is not UTF-8 text (byte {e.start}): save it as UTF-8 JSON lines") from e
    out = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError as e:
            raise DataError(f"{source}, line {n}: not valid JSON ({e.msg} at column {e.colno}); each line must be "
                            f"one object with {', '.join(fields)}") from e
        if not isinstance(row, dict):
            raise DataError(f"{source}, line {n}: a JSON object is needed, with {', '.join(fields)}")
        for f in fields:
            if f not in row:
                raise DataError(f"{source}, line {n}: the field {f!r} is missing (each line needs "
                                f"{', '.join(fields)})")
            if not isinstance(row[f], str):
                raise DataError(f"{source}, line {n}: {f!r} must be a string, not {type(row[f]).__name__}")
        for f in fields[1:] or fields:
            if not row[f]:
                raise DataError(f"{source}, line {n}: {f!r} is empty; there is nothing to learn from")
        if kind == "pairs" and row["chosen"] == row["rejected"]:
            raise DataError(f"{source}, line {n}: 'chosen' and 'rejected' are the same text, so the pair "
                            f"prefers nothing: drop it or change one side")
        out.append(PreferencePair(row["prompt"], row["chosen"], row["rejected"]) if kind == "pairs"
                   else Demonstration(row["prompt"], row.get("response", "") if kind == "sft" else ""))
    if not out:
        raise DataError(f"{source} holds no examples")
    return out


def write_jsonl(examples: list) -> str:
    return "".join(json.dumps(asdict(e), ensure_ascii=False) + "\n" for e in examples)


def data_sha256(examples: list) -> str:
    return hashlib.sha256(write_jsonl(examples).encode()).hexdigest()


# -- judges -----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Judge:
    """A programmatic preference: higher score is better."""
    spec: str                                  # how a run names it, e.g. "word:love"
    description: str                           # one line for the page
    score: Callable[[str], float]


def _lines(text: str) -> list[str]:
    return text.split("\n")


def _short_lines(text: str) -> float:
    lines = _lines(text)
    return -sum(len(s) for s in lines) / len(lines)      # minus the mean line length, in characters


def _word_count(word: str) -> Callable[[str], float]:
    pattern = re.compile(rf"\b{re.escape(word)}\b", re.IGNORECASE)
    return lambda text: float(len(pattern.findall(text)))


def _ending(line: str) -> str:
    letters = re.sub(r"[^a-z]", "", line.lower())
    return letters[-2:] if len(letters) >= 2 else ""


def _rhymes(text: str) -> float:
    ends = [_ending(s) for s in _lines(text) if _ending(s)]
    if len(ends) < 2:
        return 0.0
    return sum(a == b for a, b in zip(ends, ends[1:])) / (len(ends) - 1)


JUDGES = {
    "short-lines": ("shorter lines: minus the mean line length in characters", lambda arg: _short_lines),
    "word": ("more of a chosen word (word:love): how often it appears", lambda arg: _word_count(arg or "love")),
    "rhyme": ("lines that rhyme: the share of neighbouring lines ending in the same two letters",
              lambda arg: _rhymes),
}


def make_judge(spec: str) -> Judge:
    """A judge from its spec: "short-lines", "rhyme", or "word:<word>"."""
    name, _, arg = spec.partition(":")
    if name not in JUDGES:
        raise DataError(f"unknown judge {spec!r}; choose one of {', '.join(JUDGES)} (word takes word:<word>)")
    if name == "word" and arg and not re.fullmatch(r"[A-Za-z']{1,32}", arg):
        raise DataError(f"the word judge takes one word of letters (word:love), not {arg!r}")
    if name != "word" and arg:
        raise DataError(f"the {name} judge takes no argument")
    description, make = JUDGES[name]
    return Judge(f"{name}:{arg or 'love'}" if name == "word" else name, description, make(arg))


def distinct_n(texts: list[str], n: int = 2) -> float:
    """Distinct character n-grams over all n-grams in the texts (Li et al. 2016, on characters): 1 when
    nothing repeats, near 0 when a policy says the same thing over and over."""
    grams = [t[i:i + n] for t in texts for i in range(len(t) - n + 1)]
    return len(set(grams)) / len(grams) if grams else 0.0
