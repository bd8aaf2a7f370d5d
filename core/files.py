"""Files: writing that survives a kill, and names that cannot escape their folder.

Holds `write_atomic` (temp file in the same folder, fsync, rename, fsync the folder: a reader sees the
old file or the new one, never a torn one) and `resolve_inside` (a user-given name resolved under a
base folder, refusing `../`, absolute paths and symlinks that lead out).

Deliberately not here: what is written (checkpoints, tokenizers, datasets each own their format).
"""

from __future__ import annotations

import errno
import os
import tempfile
from pathlib import Path


def _read_umask() -> int:
    # os.umask can only be read by setting it, which races with other threads; read it once at import
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


UMASK = _read_umask()


# what a full disk (or quota, or file-size limit) looks like to a write
DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


def is_disk_full(e: BaseException) -> bool:
    return isinstance(e, OSError) and e.errno in DISK_FULL_ERRNOS


def disk_full_message(e: OSError, then: str) -> str:
    """What a CLI says when a write hit a full disk; `then` says how to continue."""
    where = f": {e.filename}" if e.filename else ""
    return f"the disk is full ({e.strerror}{where}); free some space, then {then}"


def make_readable(path: str | os.PathLike, directory: bool = False) -> None:
    """Give a file made by mkstemp/mkdtemp (0600/0700) the permissions a plain open() would have."""
    os.chmod(path, (0o777 if directory else 0o666) & ~UMASK)


def write_atomic(path: str | os.PathLike, data: bytes) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    try:
        make_readable(tmp)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    # make the rename itself durable
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    return path


def resolve_inside(base: str | os.PathLike, name: str | os.PathLike) -> Path:
    """`base / name`, resolved, or ValueError when it would lie outside `base`."""
    root = Path(base).resolve()
    target = (root / name).resolve()
    if target != root and root not in target.parents:
        raise ValueError(f"{str(name)!r} points outside {root}; use a plain name inside that folder")
    return target
