from app import models


def test_tiny_model_loads_with_left_padding(tiny_model_dir):
    model, tokenizer, info = models.load(str(tiny_model_dir))
    assert info.name == "loracle-test/tiny-llama"
    assert tokenizer.padding_side == "left" and tokenizer.pad_token is not None
    ids = tokenizer(["hello", "a longer prompt here"], return_tensors="pt", padding=True)
    out = model.generate(**ids, max_new_tokens=3, do_sample=False)
    assert out.shape[0] == 2


def test_unknown_model_folder_is_a_clear_error(tmp_path):
    import pytest

    (tmp_path / "m").mkdir()
    with pytest.raises(FileNotFoundError, match="config.json"):
        models.resolve(str(tmp_path / "m"))
