"""``guide serve``'s command line, built without vLLM (the live server is tested in test_vllm.py)."""

from __future__ import annotations

import importlib.util
import json

import pytest
from typer.testing import CliRunner

from guide_engine.errors import GuideValueError, ModelNotSupportedError
from guide_integrations.cli import app
from guide_integrations.vllm.serve import cpu_kv_cache_bytes, mask_secrets, move_api_key_to_env, vllm_serve_args

GIB, MIB = 1 << 30, 1 << 20


@pytest.fixture
def llama_folder(tmp_path):
    config = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "torch_dtype": "float32"}
    (tmp_path / "config.json").write_text(json.dumps(config))
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


def test_delta_influence_is_moved_like_delta_mid() -> None:
    from guide_integrations.vllm.middleware import rewrite_body

    body = rewrite_body({"messages": [{"role": "user", "content": "<?->hi<-?>"}], "delta_influence": 1})
    assert body["chat_template_kwargs"] == {"delta_influence": 1.0}
    with pytest.raises(GuideValueError, match="delta_influence must be a finite number"):
        rewrite_body({"messages": [], "delta_influence": "inf"})


def test_the_cpu_kv_cache_budget_is_a_quarter_of_the_available_memory_at_most_4_gib() -> None:
    # The machine: 12.64 GiB available, where vLLM's default asked for 12.96 GiB and stopped.
    assert cpu_kv_cache_bytes(12_943 * MIB) == 3_235 * MIB
    assert cpu_kv_cache_bytes(40 * GIB) == 4 * GIB
    assert cpu_kv_cache_bytes(GIB + 3) == 256 * MIB


def test_on_a_cpu_guide_serve_sets_the_weights_dtype_and_a_kv_cache_that_fits(llama_folder) -> None:
    args = vllm_serve_args(llama_folder, cpu_available=12 * GIB, env={})
    pairs = dict(zip(args[::2], args[1::2]))
    assert pairs["--dtype"] == "float32"
    assert pairs["--kv-cache-memory-bytes"] == "3072M"
    on_gpu = vllm_serve_args(llama_folder, env={})
    assert "--dtype" not in on_gpu
    assert "--kv-cache-memory-bytes" not in on_gpu


@pytest.mark.parametrize(
    "extra,env,expected",
    [
        (["--dtype", "bfloat16"], {}, {"--dtype": 1, "--kv-cache-memory-bytes": 1}),
        (["--kv-cache-memory-bytes=2G"], {}, {"--dtype": 1, "--kv-cache-memory-bytes=2G": 1}),
        (["--gpu-memory-utilization", "0.3"], {}, {"--dtype": 1, "--kv-cache-memory-bytes": 0}),
        (["--gpu_memory_utilization", "0.3"], {}, {"--dtype": 1, "--kv-cache-memory-bytes": 0}),
        ([], {"VLLM_CPU_KVCACHE_SPACE": "1"}, {"--dtype": 1, "--kv-cache-memory-bytes": 0}),
    ],
)
def test_the_callers_dtype_and_memory_choices_win(llama_folder, extra, env, expected) -> None:
    args = vllm_serve_args(llama_folder, cpu_available=12 * GIB, extra=extra, env=env)
    assert {name: args.count(name) for name in expected} == expected
    assert args[len(args) - len(extra) :] == extra


def test_secrets_are_masked_in_printed_command_lines() -> None:
    args = ["--api-key", "k1", "k2", "--hf-token=hf_x", "--port", "1", "--api_key=k3", "--hf-token"]
    assert mask_secrets(args) == [
        "--api-key",
        "***",
        "***",
        "--hf-token=***",
        "--port",
        "1",
        "--api_key=***",
        "--hf-token",
    ]


@pytest.mark.parametrize("given", [["--api-key", "K"], ["--api-key=K"], ["--api_key", "K"]])
def test_a_single_api_key_moves_from_the_command_line_to_the_environment(given) -> None:
    args, env = move_api_key_to_env(["--port", "1", *given, "--dtype", "float32"], {"PATH": "/bin"})
    assert args == ["--port", "1", "--dtype", "float32"]
    assert env == {"PATH": "/bin", "VLLM_API_KEY": "K"}


def test_several_api_keys_stay_on_the_command_line() -> None:
    given = ["--api-key", "K1", "K2"]
    assert move_api_key_to_env(given, {}) == (given, {})
    assert move_api_key_to_env(["--port", "1"], {"VLLM_API_KEY": "E"}) == (["--port", "1"], {"VLLM_API_KEY": "E"})


def test_the_readme_command_starts_vllm_with_the_key_in_its_environment_only(monkeypatch, llama_folder) -> None:
    """``guide serve --port 8000 --api-key "$KEY"`` on a CPU: what it prints and what it runs."""
    import os

    import guide_integrations.cli as cli
    import guide_integrations.vllm.serve as serve_module

    key = "sk-guide-unit-5a1f"
    started = []
    monkeypatch.setattr(cli.importlib.util, "find_spec", lambda name: object())
    monkeypatch.setattr(serve_module, "model_folder", lambda model: llama_folder)
    monkeypatch.setattr(serve_module, "_cpu_available", lambda: 12_943 * MIB)
    monkeypatch.setattr(os, "execve", lambda path, argv, env: started.append((argv, env)))
    monkeypatch.delenv("VLLM_CPU_KVCACHE_SPACE", raising=False)
    result = CliRunner().invoke(app, ["serve", "--port", "8000", "--api-key", key])
    assert result.exit_code == 0, result.output
    [(argv, env)] = started
    assert env["VLLM_API_KEY"] == key
    assert key not in " ".join(argv)
    assert key not in result.output
    assert argv[1:3] == ["-m", "vllm.entrypoints.openai.api_server"]
    pairs = dict(zip(argv[3::2], argv[4::2]))
    assert pairs["--dtype"] == "float32"
    assert pairs["--kv-cache-memory-bytes"] == "3235M"
    assert pairs["--port"] == "8000"
    printed = result.stderr.splitlines()
    assert printed[0].startswith("guide serve: CPU KV cache 3.16 GiB (a quarter of the 12.64 GiB available")
    assert printed[1] == "guide serve: VLLM_API_KEY=*** python -m " + " ".join(argv[2:])
