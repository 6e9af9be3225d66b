"""``guide serve``'s command line, built without vLLM (the live server is tested in test_vllm.py)."""

from __future__ import annotations

import importlib.util
import json

import pytest
from typer.testing import CliRunner

from guide_engine.errors import GuideValueError, ModelNotSupportedError
from guide_integrations.cli import app
from guide_integrations.vllm.serve import vllm_serve_args


@pytest.fixture
def llama_folder(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLM"], "model_type": "llama"}))
    return str(tmp_path)


def test_the_command_line_selects_guide_and_listens_on_localhost(llama_folder) -> None:
    args = vllm_serve_args(llama_folder, port=8123, delta_mid=2.0, extra=["--api-key", "k"])
    pairs = dict(zip(args[::2], args[1::2]))
    assert pairs["--model"] == llama_folder
    assert pairs["--port"] == "8123"
    assert pairs["--tokenizer-mode"] == "guide"
    assert json.loads(pairs["--hf-overrides"]) == {"architectures": ["GuideLlamaForCausalLM"]}
    assert pairs["--host"] == "127.0.0.1"
    assert json.loads(pairs["--default-chat-template-kwargs"]) == {"delta_mid": 2.0}
    assert args[-2:] == ["--api-key", "k"]


def test_an_explicit_host_replaces_the_localhost_default(llama_folder) -> None:
    args = vllm_serve_args(llama_folder, extra=["--host=0.0.0.0"])
    assert "127.0.0.1" not in args
    assert args[-1] == "--host=0.0.0.0"


def test_bad_values_are_refused_before_vllm_starts(llama_folder, tmp_path_factory) -> None:
    with pytest.raises(GuideValueError, match="--delta-mid must be a finite number"):
        vllm_serve_args(llama_folder, delta_mid=float("inf"))
    other = tmp_path_factory.mktemp("gpt2")
    (other / "config.json").write_text(json.dumps({"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2"}))
    with pytest.raises(ModelNotSupportedError, match=r"serves \[.*'LlamaForCausalLM'.*is \['GPT2LMHeadModel'\]"):
        vllm_serve_args(str(other))


@pytest.mark.skipif(importlib.util.find_spec("vllm") is not None, reason="this environment has vLLM")
def test_guide_serve_without_vllm_names_the_set_up_script() -> None:
    result = CliRunner().invoke(app, ["serve", "--port", "8001"])
    assert result.exit_code == 2
    assert result.stderr == (
        "error: guide serve needs vLLM in this environment: "
        "bash scripts/setup-vllm.sh (vLLM needs its own environment; see docs/vllm.md)\n"
    )


def test_vllm_options_after_no_model_pass_through_in_order(monkeypatch) -> None:
    """``guide serve --dtype float32`` is the default model with ``--dtype float32``, not a model named ``--dtype``."""
    import guide_integrations.cli as cli
    import guide_integrations.vllm.serve as serve_module

    calls = []
    monkeypatch.setattr(cli.importlib.util, "find_spec", lambda name: object())
    monkeypatch.setattr(serve_module, "serve", lambda model, **kw: calls.append((model, kw)))
    result = CliRunner().invoke(app, ["serve", "--dtype", "float32", "--port", "8002", "--api-key", "k"])
    assert result.exit_code == 0, result.output
    assert calls == [("default", {"port": 8002, "delta_mid": None, "extra": ["--dtype", "float32", "--api-key", "k"]})]


@pytest.mark.parametrize("where", ["top", "chat_template_kwargs"])
@pytest.mark.parametrize("name,value", [("contrast", "auto"), ("delta_queries", "output"), ("metric", "influence")])
def test_engine_only_options_are_refused_not_dropped(where, name, value) -> None:
    from guide_integrations.vllm.middleware import rewrite_body

    body = {"messages": [{"role": "user", "content": "<!!->hi<-!!>"}], "delta_mid": 2}
    body.update({name: value} if where == "top" else {"chat_template_kwargs": {name: value}})
    with pytest.raises(GuideValueError, match=f"^{name} is an option of GuideEngine .* the vLLM server does not apply"):
        rewrite_body(body)
    kept = rewrite_body({"messages": [{"role": "user", "content": "<!!->hi<-!!>"}], "delta_mid": 2})
    assert kept["chat_template_kwargs"] == {"delta_mid": 2.0}
