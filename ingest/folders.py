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


def is_index_name(name: str) -> bool:
    """A bare index name (what lives under indexes_dir()): letters, digits, '.', '_' or '-'."""
    return bool(_NAME.match(name))


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


def _owned(name: str) -> bool:
    """A file an index writes in its folder: its store, vectors (FAISS or milvus-lite), lock and temp files."""
    return (name in ("manifest.json", "index.faiss", ".lock") or name.startswith(("chunks.sqlite", "vectors.db"))
            or (name.startswith(".") and (name.endswith(".tmp") or "vectors.db" in name)))


def foreign_files(path: Path) -> list[str]:
    """Entries of an index folder that the index did not write (a folder path may point anywhere)."""
    return sorted(p.name for p in path.iterdir() if not _owned(p.name)) if path.is_dir() else []


def check_new_index_folder(path: Path) -> None:
    """Refuse to make an index in a file, or in a folder that already holds other things."""
    if path.exists() and not path.is_dir():
        raise FileExistsError(f"index path {path} is a file, not an index folder; give a new folder or a plain name")
    foreign = foreign_files(path)
    if foreign:
        shown = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
        raise FileExistsError(f"folder {path} already holds files that are not an index ({shown}); give an empty "
                              "or new folder, or a plain index name")


def remove_index(name_or_path: str | Path) -> Path:
    """Delete an index folder (once no writer holds it); returns its path. A folder that also holds files the
    index did not write is refused, so a mistyped path never deletes anything but an index."""
    path = index_path(name_or_path)
    if not (path / "manifest.json").is_file():
        raise FileNotFoundError(f"no index at {path} (see `loracle index list`)")
    foreign = foreign_files(path)
    if foreign:
        raise ValueError(f"{path} holds files besides the index ({', '.join(foreign[:5])}), so it is not removed; "
                         f"move those out first, or delete the index's own files yourself")
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
