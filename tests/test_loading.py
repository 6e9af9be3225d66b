"""Loading: the embedded model's converted safetensors folder, its cache, and the load errors."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
import torch

from guide_engine import GuideEngine, loading
from guide_engine.errors import GuideError, ModelLoadError

# ------------------------------------------------------------------------------------ the cache


def test_the_cache_honours_guide_cache_then_xdg_cache_home(monkeypatch, tmp_path) -> None:
    monkeypatch.delenv("GUIDE_CACHE", raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    assert loading.cache_root() == Path.home() / ".cache" / "guide" / "converted"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert loading.cache_root() == tmp_path / "xdg" / "guide" / "converted"
    monkeypatch.setenv("GUIDE_CACHE", str(tmp_path / "mine"))
    assert loading.cache_root() == tmp_path / "mine" / "converted"


@pytest.fixture
def conversions(monkeypatch, tmp_path):
    """Conversions into a temporary cache, recorded instead of run (the real one is a real_model test)."""
    monkeypatch.setenv("GUIDE_CACHE", str(tmp_path / "cache"))
    done: list[Path] = []

    def record(folder, gguf, target, progress):
        target.mkdir(parents=True)
        (target / "config.json").write_text("{}")
        done.append(target)

    monkeypatch.setattr(loading, "_convert", record)
    return done


def test_a_gguf_file_is_converted_once_per_content(conversions, tmp_path) -> None:
    (tmp_path / "m.gguf").write_bytes(b"first content")
    first = loading.converted_gguf_folder(str(tmp_path), "m.gguf")
    assert loading.converted_gguf_folder(str(tmp_path), "m.gguf") == first
    assert len(conversions) == 1
    assert Path(first).parent == loading.cache_root()
    assert Path(first).name.startswith("m-")

    (tmp_path / "m.gguf").write_bytes(b"changed content")  # same name, new content: converted again
    second = loading.converted_gguf_folder(str(tmp_path), "m.gguf")
    assert second != first and len(conversions) == 2

    copy = tmp_path / "elsewhere"  # the same content installed elsewhere (another environment): shared
    copy.mkdir()
    (copy / "m.gguf").write_bytes(b"changed content")
    assert loading.converted_gguf_folder(str(copy), "m.gguf") == second
    assert len(conversions) == 2


def test_a_folder_converted_into_the_old_vllm_cache_is_moved_not_converted_again(conversions, tmp_path) -> None:
    """Before issue 27 the cache folder was named vllm/ (even without vLLM): its folders are moved and reused."""
    (tmp_path / "m.gguf").write_bytes(b"converted before")
    name = f"m-{loading._content_hash(str(tmp_path / 'm.gguf'))}"
    old = tmp_path / "cache" / "vllm" / name
    old.mkdir(parents=True)
    (old / "config.json").write_text('{"old": true}')
    (old / "model.safetensors").write_bytes(b"weights")
    found = loading.converted_gguf_folder(str(tmp_path), "m.gguf")
    assert Path(found) == tmp_path / "cache" / "converted" / name
    assert (Path(found) / "model.safetensors").read_bytes() == b"weights"
    assert conversions == []
    assert not (tmp_path / "cache" / "vllm").exists()  # the emptied old folder goes too


def test_an_old_cache_folder_that_cannot_be_moved_is_read_in_place(conversions, monkeypatch, tmp_path) -> None:
    (tmp_path / "m.gguf").write_bytes(b"converted before")
    old = tmp_path / "cache" / "vllm" / f"m-{loading._content_hash(str(tmp_path / 'm.gguf'))}"
    old.mkdir(parents=True)
    (old / "config.json").write_text("{}")

    def no_rename(source, target):
        raise PermissionError("read-only")

    monkeypatch.setattr(loading.os, "replace", no_rename)
    assert loading.converted_gguf_folder(str(tmp_path), "m.gguf") == str(old)
    assert conversions == []


def test_a_failed_conversion_leaves_no_folder_and_names_the_cache_variable(monkeypatch, tmp_path) -> None:
    import transformers

    monkeypatch.setenv("GUIDE_CACHE", str(tmp_path / "cache"))
    (tmp_path / "m.gguf").write_bytes(b"not read: the tokenizer load fails first")

    def fail(*args, **kwargs):
        raise OSError("No space left on device")

    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", fail)
    with pytest.raises(ModelLoadError, match=r"No space left on device\. Set GUIDE_CACHE to a writable folder"):
        loading.converted_gguf_folder(str(tmp_path), "m.gguf", progress=False)
    assert list(loading.cache_root().iterdir()) == []  # neither the target nor the staging folder is left


def test_only_the_embedded_gguf_is_recognized_as_the_embedded_model(tmp_path) -> None:
    folder, gguf = loading.embedded_model_location()
    assert loading.is_embedded_model(folder, gguf)
    assert loading.is_embedded_model(os.path.join(folder, "."), gguf)
    assert not loading.is_embedded_model(folder, None)
    (tmp_path / gguf).write_bytes(b"a file of the same name elsewhere")
    assert not loading.is_embedded_model(str(tmp_path), gguf)


# ------------------------------------------------------------------------------------ load errors


@pytest.mark.parametrize("variable", ["HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"])
def test_a_hub_id_while_offline_says_the_hub_is_offline_and_names_the_variable(monkeypatch, variable) -> None:
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv(variable, "1")
    with pytest.raises(ModelLoadError) as raised:
        GuideEngine.from_pretrained("no-such-org/no-such-model")
    message = str(raised.value)
    assert message.startswith("could not load model 'no-such-org/no-such-model': it is not a local folder")
    assert f"the Hugging Face hub is offline ({variable}=1)" in message
    assert "Pass 'default' for the embedded model, a local folder, a .gguf file" in message
    assert message.endswith(f"or unset {variable} to download it")
    assert "couldn't connect" not in message
    assert ".." not in message


def test_a_missing_folder_is_named_as_a_folder(monkeypatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelLoadError, match=r"^could not load model '/no/such/folder': there is no such folder\. "):
        GuideEngine.from_pretrained("/no/such/folder")


def test_a_folder_without_a_model_gives_the_reason_once_punctuated(tmp_path) -> None:
    with pytest.raises(GuideError) as raised:
        GuideEngine.from_pretrained(str(tmp_path))
    message = str(raised.value)
    assert re.match(rf"could not load model {re.escape(repr(str(tmp_path)))}: \S", message)
    assert ".." not in message
    assert "Pass 'default' for the embedded model" in message


# ------------------------------------------------------------------------------ the real model


@pytest.mark.real_model
def test_the_embedded_model_loads_from_its_converted_folder_as_the_gguf_does(monkeypatch, tmp_path, capfd) -> None:
    """Converted on first use (each stage said), then identical to the GGUF load: weights, logits, tokens."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    monkeypatch.setenv("GUIDE_CACHE", str(tmp_path))
    engine = GuideEngine.from_pretrained()
    folder = loading.converted_gguf_folder(*loading.embedded_model_location())
    progress = capfd.readouterr().err
    for stage in ["1/4 reading the tokenizer", "2/4 reading and dequantizing", "3/4 converting", "4/4 writing"]:
        assert stage in progress
    assert engine.model.name_or_path == folder
    assert [p.name for p in Path(folder).parent.iterdir()] == [Path(folder).name]  # no staging folder left
    assert Path(folder).stat().st_mode & 0o777 == 0o755  # readable by whoever shares the cache

    again = GuideEngine.from_pretrained("default")
    assert capfd.readouterr().err.count("guide: ") == 0  # warm: nothing converted, nothing said
    assert again.model.name_or_path == folder

    gguf_folder, gguf = loading.embedded_model_location()
    reference = AutoModelForCausalLM.from_pretrained(gguf_folder, gguf_file=gguf, attn_implementation="sdpa")
    reference_tokenizer = AutoTokenizer.from_pretrained(gguf_folder, gguf_file=gguf)

    ours, theirs = engine.model.state_dict(), reference.state_dict()
    assert ours.keys() == theirs.keys()
    assert all(ours[name].dtype == theirs[name].dtype and torch.equal(ours[name], theirs[name]) for name in ours)
    assert engine.model.generation_config.eos_token_id == reference.generation_config.eos_token_id

    messages = [{"role": "user", "content": "Name three fruits, then say <b>thanks</b> 🍎."}]
    texts = ["Hello, world!", "  spaces\tand\nnewlines ", "<|im_start|>user\nhi<|im_end|>", "déjà vu 東京"]
    tokenizer = engine.tokenizer
    assert [tokenizer(t)["input_ids"] for t in texts] == [reference_tokenizer(t)["input_ids"] for t in texts]
    assert tokenizer.apply_chat_template(messages, tokenize=False) == reference_tokenizer.apply_chat_template(
        messages, tokenize=False
    )
    assert (tokenizer.eos_token, tokenizer.bos_token, tokenizer.pad_token) == (
        reference_tokenizer.eos_token,
        reference_tokenizer.bos_token,
        reference_tokenizer.pad_token,
    )

    ids = reference_tokenizer.apply_chat_template(
        messages, add_generation_prompt=True, return_tensors="pt", return_dict=True
    )["input_ids"]
    plain = AutoModelForCausalLM.from_pretrained(folder, attn_implementation="sdpa")  # the folder, stock attention
    with torch.no_grad():
        assert torch.equal(plain(ids).logits, reference(ids).logits)
        expected = reference.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=16, do_sample=False)
    assert engine.generate(messages, max_new_tokens=16).token_ids == expected[0, ids.shape[1] :].tolist()
