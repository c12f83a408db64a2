"""What the repository ships is portable: no JSON under adapters/, indexes/ or data/ names a folder of the
machine that produced it (a trainer's model cache, a data path), since no other machine has that folder."""
from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import REPO

SHIPPED = ("adapters", "indexes", "data")
ABSOLUTE = re.compile(r"^(?:/|[A-Za-z]:[\\/]|\\\\)")  # POSIX root, Windows drive or UNC share
# inside a longer string (e.g. a `loracle train --data /work/...` command): a token that is a path of 2+ parts
EMBEDDED = re.compile(r"(?:^|[\s=\"'`(])(/[^/\s\"'`]+/[^\s\"'`]*|[A-Za-z]:\\[^\s\"'`]+)")


def shipped_json_files() -> list[Path]:
    if shutil.which("git") is None or not (REPO / ".git").exists():
        pytest.skip("not a git checkout: the shipped files are the ones git tracks")
    out = subprocess.run(["git", "ls-files", "-z", "--", *SHIPPED], cwd=REPO, capture_output=True, check=True).stdout
    return [REPO / name for name in out.decode().split("\0") if name.endswith((".json", ".jsonl"))]


def machine_paths(value, where: str = "", embedded: bool = True):
    """(key path, string) for every string value that is, or (when `embedded`) contains, an absolute path."""
    if isinstance(value, dict):
        for key, item in value.items():
            yield from machine_paths(item, f"{where}.{key}", embedded)
    elif isinstance(value, list):
        for i, item in enumerate(value):
            yield from machine_paths(item, f"{where}[{i}]", embedded)
    elif isinstance(value, str) and (ABSOLUTE.match(value) or (embedded and EMBEDDED.search(value))):
        yield where or ".", value


def test_the_path_finder_finds_what_it_should():
    card = {"a": "/root/.cache/x", "b": ["C:\\models\\m"], "c": {"d": "loracle train --data /work/shared/qa.jsonl"},
            "ok": ["data/pubmedqa/train.jsonl", "q/k/v/o projections", "train 450 / dev 50", "https://example.org/a/b"]}
    assert [where for where, _ in machine_paths(card)] == [".a", ".b[0]", ".c.d"]


def test_no_shipped_json_holds_an_absolute_path():
    found = []
    for path in shipped_json_files():
        rel = path.relative_to(REPO).as_posix()
        if path.suffix == ".json":
            record = json.loads(path.read_text(encoding="utf-8"))
            found += [f"{rel}: {where} = {value[:100]!r}" for where, value in machine_paths(record)]
            continue
        for n, line in enumerate(path.read_text(encoding="utf-8").split("\n"), 1):  # records: free text inside
            if line.strip():
                found += [f"{rel}:{n}: {where} = {value[:100]!r}"
                          for where, value in machine_paths(json.loads(line), embedded=False)]
    assert not found, "machine-specific paths in shipped files (write them relative, or as names):\n" + "\n".join(found)
