"""Shared fixtures. Everything offline; real tiny models and real files."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["UNSTRUCTURED_DISABLE_NOTICE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
if "LORACLE_AUDIT" not in os.environ:  # engines built by tests log their answers here, never in the checkout
    import tempfile

    os.environ["LORACLE_AUDIT"] = os.path.join(tempfile.mkdtemp(prefix="loracle-audit-"), "audit.sqlite")

# pymilvus reconfigures logging when first imported (logging.config.dictConfig), which closes every handler made
# before it. absl's handler (absl comes with rouge-score) then closes the stream it was made with: under pytest,
# the capture file of an earlier test, which breaks capture for the rest of the session. Importing pymilvus
# first, before any test makes such a handler, keeps test order from mattering. Not an issue outside pytest
# (absl never closes the real stderr).
import pymilvus  # noqa: E402,F401

REPO = Path(__file__).resolve().parents[1]
# A copy of the shared data's fixed sample subset (tests/data/README.md), so a plain clone runs every test.
SHARED_DATA = REPO / "tests" / "data"


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A random 2-layer Llama (hidden 64) with the shipped SmolLM2 tokenizer, saved as safetensors."""
    from tests.tiny import build_tiny_llama

    return build_tiny_llama(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    return SHARED_DATA


@pytest.fixture(scope="session")
def sample_index(tmp_path_factory, shared_data) -> Path:
    """A real index (default MiniLM embedder, flat FAISS) of the 20 documents in sample/docs
    (txt, md, html, pdf), built once per session in a tmp dir. Open it with
    `Index.open(sample_index)` or `Retriever(sample_index)`; nothing global is set."""
    from ingest.pipeline import ingest_paths

    path = tmp_path_factory.mktemp("indexes") / "sample"
    report = ingest_paths([shared_data / "sample" / "docs"], index=path)
    assert not report.rejected and len(report.added) == 20, report
    return path
