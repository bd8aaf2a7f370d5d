"""CLI plumbing: config dataclasses become argparse flags and back, and every command stops and fails
the same way.

Holds `add_dataclass_args` (one flag per field, typed from its annotation, helped by the field's own
*why* comment in the source, and absent from the namespace unless typed, so a flag can override a
saved run), `dataclass_kwargs` (the typed flags of one dataclass out of the namespace), `to_argv` (the
inverse: the flags that rebuild an instance, which is how a job launches `python -m core.train` from
dataclasses rather than hand-built strings), `StopFlag` (Ctrl-C and SIGTERM ask the work in flight to
finish cleanly) and `report_error` (the one way a command prints a project error, a full disk included);
and for commands run as children of the server, `child_env` and `error_line` (what a failed one said).

Deliberately not here: any command's own arguments and loop (each module's `main`), torch.
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import os
import re
import signal
import sys
import types
import typing
from functools import lru_cache
from pathlib import Path

from core.catalog import ROOT, scrub_paths
from core.files import disk_full_message, is_disk_full

_FIELD_LINE = re.compile(r"^\s+(\w+)\s*:[^=#]*(?:=[^#]*)?(?:#\s?(.*))?$")
_COMMENT_LINE = re.compile(r"^\s+#\s?(.*)$")


@lru_cache(maxsize=None)
def field_help(cls) -> dict[str, str]:
    """Each field's trailing comment in the class source (continued on comment-only lines below it):
    the config's own explanation, shown as the flag's help."""
    try:
        lines = inspect.getsource(cls).splitlines()
    except (OSError, TypeError):
        return {}
    out, current = {}, None
    for line in lines[1:]:
        m = _FIELD_LINE.match(line)
        if m and not line.strip().startswith(("def ", "@", "#")):
            current = m.group(1)
            if m.group(2):
                out[current] = m.group(2).strip()
            continue
        c = _COMMENT_LINE.match(line)
        if c and current in out:
            out[current] += " " + c.group(1).strip()
        else:
            current = None
    return out


def _scalar_type(tp):
    """int, float, str or bool for an annotation such as `int | None`."""
    if isinstance(tp, types.UnionType) or typing.get_origin(tp) is typing.Union:
        tp = next(a for a in typing.get_args(tp) if a is not type(None))
    return tp if tp in (int, float, str, bool) else str


def add_dataclass_args(parser: argparse.ArgumentParser, cls, title: str | None = None,
                       skip: tuple[str, ...] = ()) -> None:
    """A flag per field of `cls` (`--field-name`); booleans get --x / --no-x, tuples take several values."""
    group = parser.add_argument_group(title) if title else parser
    hints = typing.get_type_hints(cls)
    helps = field_help(cls)
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        shown = " ".join(map(str, default)) if isinstance(default, tuple) else default
        help_text = (helps.get(f.name, "") + f" (default: {shown})").strip()
        # SUPPRESS: only flags the user typed appear in the namespace (they may override a saved run)
        kw = dict(default=argparse.SUPPRESS, dest=f"{cls.__name__}.{f.name}",
                  help=help_text.replace("%", "%%"))        # argparse formats help with %: "15 %" must stay text
        tp = hints[f.name]
        flag = "--" + f.name.replace("_", "-")
        if typing.get_origin(tp) is tuple:
            group.add_argument(flag, nargs="*", type=_scalar_type(typing.get_args(tp)[0]), **kw)
        elif _scalar_type(tp) is bool:
            group.add_argument(flag, action=argparse.BooleanOptionalAction, **kw)
        else:
            group.add_argument(flag, type=_scalar_type(tp), **kw)


def dataclass_kwargs(namespace: argparse.Namespace | dict, cls) -> dict:
    """The fields of `cls` that were given on the command line."""
    ns = vars(namespace) if isinstance(namespace, argparse.Namespace) else namespace
    prefix = cls.__name__ + "."
    return {k[len(prefix):]: v for k, v in ns.items() if k.startswith(prefix)}


def to_argv(obj, skip: tuple[str, ...] = ()) -> list[str]:
    """The flags that rebuild `obj` through `add_dataclass_args`: every field that differs from its default."""
    out = []
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        if f.name in skip or value == default:
            continue
        flag = "--" + f.name.replace("_", "-")
        if isinstance(value, bool):
            out.append(flag if value else "--no-" + flag[2:])
        elif isinstance(value, tuple):
            out += [flag, *map(str, value)]
        elif value is None:
            raise ValueError(f"{f.name} is None, which has no flag; leave it at its default")
        else:
            out += [flag, str(value)]
    return out


class StopFlag:
    """Ctrl-C or SIGTERM sets `asked`; the command finishes the step in flight, saves and exits."""

    def __init__(self):
        self.asked = False
        signal.signal(signal.SIGINT, self._on_signal)
        signal.signal(signal.SIGTERM, self._on_signal)

    def _on_signal(self, signum, frame) -> None:
        self.asked = True


def report_error(e: BaseException, then: str) -> int:
    """Print a project error (or a full disk, saying how to continue: `then`) as `error: ...`; exit 1."""
    if is_disk_full(e):
        e = disk_full_message(e, then)
    print(f"error: {e}", file=sys.stderr)
    return 1


# ---------------------------------------------------------------------------------------------------
# Commands run as children (training jobs, exports, imports, background fits)

def child_env(**extra: str) -> dict:
    """A child command's environment: this one, with the project importable and `extra` set."""
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    return {**os.environ, "PYTHONPATH": path, **extra}


def error_line(log: Path, limit: int = 500) -> str:
    """What a child command's failure says, from its log: its last `error: ...` line (how every command here
    reports one), else its last line; with this server's folders shortened, for a visitor to read."""
    try:
        lines = [line.strip() for line in log.read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        return ""
    errors = [line[len("error: "):] for line in lines if line.startswith("error: ")]
    return scrub_paths((errors or lines or [""])[-1])[:limit]
