"""Index folders on disk: where a named index lives, listing and removing them, the one-writer lock,
and atomic file replacement. `ingest.index` builds the index itself on these (and re-exports the
public names, so `from ingest.index import index_path, list_indexes, remove_index` keeps working)."""
from __future__ import annotations

import os
import re
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

from ingest.config import indexes_dir

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
WRITER_WAIT_S = 2.0  # a reader's repair holds the lock for milliseconds; a real second writer far longer


class IndexLockedError(RuntimeError):
    """Another process holds the index's writer lock."""


def index_path(name_or_path: str | Path) -> Path:
    """A bare name lives under indexes_dir(); anything with a path separator is a folder path."""
    s = str(name_or_path)
    if isinstance(name_or_path, Path) or os.sep in s or "/" in s:
        return Path(name_or_path).expanduser()
    if not _NAME.match(s):
        raise ValueError(f"index name '{s}' is not valid: use letters, digits, '.', '_' or '-'")
    return indexes_dir() / s


def list_indexes() -> list[str]:
    """Names of the indexes under indexes_dir()."""
    root = indexes_dir()
    return sorted(p.name for p in root.iterdir() if (p / "manifest.json").is_file()) if root.is_dir() else []


def remove_index(name_or_path: str | Path) -> Path:
    """Delete an index folder (once no writer holds it); returns its path."""
    path = index_path(name_or_path)
    if not (path / "manifest.json").is_file():
        raise FileNotFoundError(f"no index at {path} (see `loracle index list`)")
    with writer_lock(path):
        shutil.rmtree(path)
    return path


@contextmanager
def writer_lock(path: Path, timeout: float = 0) -> Iterator[None]:
    """Hold `path/.lock` (filelock); IndexLockedError when another process holds it past `timeout`."""
    from filelock import FileLock, Timeout

    path.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(path / ".lock"))
    try:
        lock.acquire(timeout=timeout)
    except Timeout:
        raise IndexLockedError(f"index {path} is being written by another process (lock {path / '.lock'}); "
                               "wait for that ingest to finish, then try again") from None
    try:
        yield
    finally:
        lock.release()


def write_atomic(path: Path, write: Callable[[Path], object]) -> None:
    """`write(tmp)` beside `path`, then os.replace: readers see the old file or the new one, never half."""
    tmp = path.with_name(f".{path.name}.tmp")
    write(tmp)
    os.replace(tmp, path)
