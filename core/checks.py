"""Checks: the project's error root and the one idiom for validating a value a person gave us.

Holds `PlaygroundError`, the base of every error the project raises on purpose (each concern has its
own subclass: `ConfigError` here, `TokenizerError`, `CorpusError`, `ModelError`, `CheckpointError`,
`ExportError`, `JobError`, `ScalingError`, ...), so a CLI or a page catches "anything we can explain"
with one `except PlaygroundError` and lets real bugs through; and the checks every config, knob, flag
and form uses (`integer`, `number`, `choice`, `text`), which name the setting, its range and the value
in the same words everywhere (vLLM's rule for serving knobs).

Every error is a ValueError too, so code that only knows the standard library still catches them.

Deliberately not here: what the ranges are (each config's module holds its own), and reading values
from links (the pages' `playground.shared`).
"""

from __future__ import annotations

import math
import os
from typing import Sequence

import numpy as np


class PlaygroundError(ValueError):
    """Something a person can fix: the message says what was wrong and what to change."""


class ConfigError(PlaygroundError):
    """A setting is out of range or of the wrong kind; the message names it, its range and the value."""


def integer(name: str, value, low: int | None = None, high: int | None = None,
            error: type[PlaygroundError] = ConfigError) -> int:
    """`value` as an int in [low, high] (either bound may be None), or `error` naming the setting."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise error(f"{name} must be an integer, got {value!r}")
    if (low is not None and value < low) or (high is not None and value > high):
        if high is not None:
            rng = f"in [{low}, {high}]"
        else:
            rng = "positive" if low == 1 else f">= {low}"
        kind = "a positive integer" if rng == "positive" else f"an integer {rng}"
        raise error(f"{name} must be {kind}, got {value!r}")
    return int(value)


def number(name: str, value, low: float = -math.inf, high: float = math.inf, low_open: bool = False,
           high_open: bool = False, error: type[PlaygroundError] = ConfigError) -> float:
    """`value` as a finite float in the interval (open or closed at each end), or `error` naming it."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating, np.integer)):
        raise error(f"{name} must be a number, got {value!r}")
    v = float(value)
    lo_ok = v > low if low_open else v >= low
    hi_ok = v < high if high_open else v <= high
    if not math.isfinite(v) or not lo_ok or not hi_ok:
        if math.isinf(low) and math.isinf(high):
            raise error(f"{name} must be a finite number, got {value!r}")
        if math.isinf(high):
            raise error(f"{name} must be a finite number {'>' if low_open else '>='} {low:g}, got {value!r}")
        rng = f"{'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
        raise error(f"{name} must be a finite number in {rng}, got {value!r}")
    return v


def choice(name: str, value, options: Sequence, error: type[PlaygroundError] = ConfigError):
    """`value` if it is one of `options`, else `error` listing them."""
    if isinstance(value, (list, dict, set)) or value not in options:
        raise error(f"{name} must be one of {', '.join(map(str, options))}; got {value!r}")
    return value


def text(name: str, value, error: type[PlaygroundError] = ConfigError) -> str:
    """`value` as a str (a path is accepted and turned into its text), or `error`."""
    if isinstance(value, os.PathLike):
        value = os.fspath(value)
    if not isinstance(value, str):
        raise error(f"{name} must be text, got {value!r}")
    return value
