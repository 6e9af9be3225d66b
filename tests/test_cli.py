"""Tests of the ``guide`` console script (guide_engine.cli, guide_integrations.cli), in-process and installed."""

from __future__ import annotations

import importlib.metadata
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy
import pytest
import torch
import typer
from typer.testing import CliRunner

import guide_engine.cli as engine_cli
from guide_engine import GuideEngine, GuideError, InfluenceResult, ModelLoadError, TagError, shared_engine
from guide_engine.cli import app
from guide_integrations.cli import ENGINE_COMMANDS, engine_commands
from guide_integrations.cli import app as guide_app
from tests.reference import tiny_model

PROMPT = "Name <!!->three<-!!> colors of the rainbow."
SPAN_PROMPT = "Write about <?->the moon<-?> in one line."
BAD_TAGS = "Please <!!-> stress this <-!> now."
runner = CliRunner()


@pytest.fixture(scope="session")
def engine():
    return shared_engine()


def invoke(*args: str, input: str | None = None):
    return runner.invoke(app, list(args), input=input)


def printed(text: str) -> str:
    """What `guide generate` prints for a result text: the text and a final newline."""
    return text if text.endswith("\n") else text + "\n"


def guide_command() -> str:
    """The installed console script, next to this interpreter (or on PATH)."""
    beside = Path(sys.executable).with_name("guide")
    found = str(beside) if beside.exists() else shutil.which("guide")
    if found is None:
        pytest.fail("the `guide` console script is not installed; run `pip install -e .`")
    return found


# ------------------------------------------------------------------------------- errors (no model)


def test_malformed_tag_exits_2_with_the_tag_error_on_stderr() -> None:
    with pytest.raises(TagError) as expected:
        from guide_engine import parse_tags

        parse_tags(BAD_TAGS)
    result = invoke("generate", BAD_TAGS)
    assert result.exit_code == 2
    assert result.stderr == f"error: {expected.value}\n"
    assert "closing tag '<-!>' at position 25" in result.stderr
    assert result.stdout == ""
    result = invoke("generate", "ok", "--system", "You are <!-> terse.")
    assert result.exit_code == 2 and result.stderr.startswith("error: unclosed tag '<!->' at position 8")


@pytest.mark.parametrize("value", ["nan", "inf", "-inf"])
def test_non_finite_delta_mid_exits_2_naming_the_value(value: str) -> None:
    result = invoke("generate", PROMPT, "--delta-mid", value)
    assert result.exit_code == 2
    assert result.stderr == f"error: --delta-mid must be a finite number, got {float(value)}\n"
    result = invoke("influence", SPAN_PROMPT, "--delta-influence", value)
    assert (result.exit_code, result.stderr) == (
        2,
        f"error: --delta-influence must be a finite number, got {float(value)}\n",
    )


def test_other_bad_input_is_one_line_exit_2() -> None:
    cases = {
        (
            "generate",
            PROMPT,
            "--layers",
            "1,x",
        ): "error: --layers must be 'all' or comma-separated layer indices such as 0,1,2; got '1,x'",
        ("generate",): "error: the prompt read from stdin is empty",
        (
            "influence",
            "no span here",
        ): "error: guide influence needs an influence span: wrap the text to measure in <?-> … <-?>",
        (
            "influence",
            SPAN_PROMPT,
            "--layers-to-plot",
            ",",
        ): "error: --layers-to-plot must be comma-separated layer indices such as 0,1,2; got ','",
        ("generate", PROMPT, "--contrast", "often"): "error: --contrast must be a number >= 0 or 'auto', got 'often'",
    }
    for args, message in cases.items():
        result = invoke(*args)
        assert (result.exit_code, result.stderr) == (2, message + "\n"), args


def test_a_bad_json_schema_exits_2_before_loading_a_model() -> None:
    for value, message in (("missing.json", "neither inline JSON nor a readable file"), ("{oops", "not valid JSON")):
        result = invoke("generate", "x", "--json-schema", value)
        assert result.exit_code == 2 and message in result.stderr, result.stderr


# ------------------------------------------------------------------- checked before the model loads


@pytest.fixture
def no_loading(monkeypatch):
    """Make loading a model fail the test: every error below must come before it."""

    def load_engine(model, gguf_file, **settings):
        pytest.fail(f"the model {model!r} was loaded although the input is bad")

    monkeypatch.setattr(engine_cli, "load_engine", load_engine)


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory, smol_tokenizer) -> Path:
    """A tiny random Llama (3 layers, a context of 40 tokens) saved with SmolLM2's tokenizer."""
    torch.manual_seed(0)
    model = tiny_model("llama")
    model.config.max_position_embeddings = 40
    folder = tmp_path_factory.mktemp("tiny-llama")
    model.save_pretrained(folder)
    smol_tokenizer.save_pretrained(folder)
    return folder


def test_the_embedded_model_sizes_are_read_from_its_gguf_header_alone() -> None:
    """30 layers, 9 heads, a context of 8192: SmolLM2-135M-Instruct's config, without loading it."""
    assert engine_cli.read_model_sizes("default", None) == engine_cli.ModelSizes(30, 9, 8192)


def test_the_gguf_header_reader_equals_gguf_s_own_reader(tmp_path: Path) -> None:
    """Arrays (of strings, of numbers, nested) before the sizes are skipped; values equal GGUFReader's."""
    gguf = pytest.importorskip("gguf")
    path = tmp_path / "tiny.gguf"
    writer = gguf.GGUFWriter(str(path), "qwen2")
    writer.add_array("general.tags", ["a", "ünïcode", ""])
    writer.add_array("general.numbers", [1.5, 2.5])
    writer.add_array("general.nested", [[1, 2], [3]])
    writer.add_name("tiny")
    writer.add_block_count(5)
    writer.add_head_count(6)
    writer.add_context_length(77)
    writer.add_tensor("w", numpy.zeros((2, 2), dtype=numpy.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    values = engine_cli.read_gguf_metadata(str(path), lambda found: False)
    reference = gguf.GGUFReader(str(path))
    scalars = {k: f.contents() for k, f in reference.fields.items() if not k.startswith("GGUF.") and f.types[0] != 9}
    assert values == scalars
    assert engine_cli.gguf_sizes("tiny", str(path)) == engine_cli.ModelSizes(5, 6, 77)
    (tmp_path / "bad.gguf").write_bytes(b"GGUF\x03\x00\x00\x00\x01")
    with pytest.raises(ModelLoadError, match="^could not load model 'x': the file ends inside its GGUF"):
        engine_cli.gguf_sizes("x", str(tmp_path / "bad.gguf"))
    (tmp_path / "text.gguf").write_text("hello")
    with pytest.raises(ModelLoadError, match=r"'x': not a GGUF file \(it does not start with 'GGUF'\)"):
        engine_cli.gguf_sizes("x", str(tmp_path / "text.gguf"))


def test_bad_input_fails_before_the_model_loads_with_a_command_line_message(no_loading, tmp_path: Path) -> None:
    missing = tmp_path / "no-such-folder" / "moon.png"
    cases = {
        ("generate", PROMPT, "--layers", "0,99"): (
            "--layers: layer 99 is out of range; this model has layers 0..29 (negative indices count from the end)"
        ),
        ("generate", PROMPT, "--layers=-31"): (
            "--layers: layer -31 is out of range; this model has layers 0..29 (negative indices count from the end)"
        ),
        ("influence", SPAN_PROMPT, "--layers-to-plot", "0,99"): (
            "--layers-to-plot: layer 99 is out of range; this model has layers -1..29"
        ),
        ("generate", ""): "PROMPT is empty: give the text to send, or '-' to read it from stdin",
        ("influence", "  "): "PROMPT is empty: give the text to send, or '-' to read it from stdin",
        ("generate", "<!!-> <-!!>"): "PROMPT has no text besides its tags: give the text to send, or '-' to read it "
        "from stdin",
        ("generate", PROMPT, "--system", ""): "--system is empty: give its text or leave it out",
        ("influence", SPAN_PROMPT, "--plot", str(missing)): (
            f"--plot {str(missing)!r}: the folder {str(missing.parent)!r} does not exist"
        ),
        ("influence", SPAN_PROMPT, "--html", str(tmp_path)): f"--html {str(tmp_path)!r} is a folder; give a file name",
        ("influence", SPAN_PROMPT, "--plot", ""): "--plot needs a file name, got ''",
        ("generate", PROMPT, "--contrast=-1"): "--contrast must be a number >= 0 or 'auto', got '-1'",
        ("generate", PROMPT, "--stop", ""): "--stop needs a non-empty string, got ''",
        ("generate", PROMPT, "--temperature=-1"): "--temperature must be >= 0 (0 = greedy), got -1.0",
        ("generate", PROMPT, "--top-p", "1.5"): "--top-p must be in (0, 1], got 1.5",
        ("influence", SPAN_PROMPT, "--repetition-penalty", "0"): (
            "--repetition-penalty must be > 0 (1 = off, above 1 discourages repeats), got 0.0"
        ),
    }
    for args, message in cases.items():
        result = invoke(*args)
        assert (result.exit_code, result.stderr) == (2, f"error: {message}\n"), args


def test_an_unreadable_model_fails_before_loading(no_loading, tmp_path: Path) -> None:
    result = invoke("generate", PROMPT, "--model", str(tmp_path))
    assert result.exit_code == 2
    assert result.stderr.startswith(f"error: could not load model {str(tmp_path)!r}: ")
    assert result.stderr.endswith("a hub id that is in the local Hugging Face cache\n")
    assert len(result.stderr.splitlines()) == 1
    result = invoke("generate", PROMPT, "--model", str(tmp_path / "x.gguf"))
    assert (result.exit_code, result.stderr) == (
        2,
        f"error: model {str(tmp_path / 'x.gguf')!r} ends in .gguf but there is no such file\n",
    )


@pytest.mark.parametrize("model", ["/no/such/folder", "no/such/../folder", "nosuch/repo"])
def test_a_missing_model_gets_the_python_apis_message(no_loading, model: str) -> None:
    """The command says what ``GuideEngine.from_pretrained`` says (a path: "there is no such folder")."""
    with pytest.raises(ModelLoadError) as python_api:
        GuideEngine.from_pretrained(model)
    result = invoke("generate", "Hi", "--model", model)
    assert (result.exit_code, result.stderr) == (2, f"error: {python_api.value}\n")
    if model.startswith("/"):
        assert result.stderr.startswith(f"error: could not load model {model!r}: there is no such folder. Pass ")


def test_layers_are_checked_against_a_folder_models_own_config(no_loading, tiny_folder: Path) -> None:
    result = invoke("generate", PROMPT, "--model", str(tiny_folder), "--layers", "0,3")
    assert (result.exit_code, result.stderr) == (
        2,
        "error: --layers: layer 3 is out of range; this model has layers 0..2 (negative indices count from the end)\n",
    )


@pytest.mark.parametrize(
    "command,option,value,message",
    [
        ("generate", "--delta-mid", "high", "'high' is not a number"),
        ("generate", "--top-p", "most", "'most' is not a number"),
        ("generate", "--seed", "1.5", "'1.5' is not a whole number"),
        ("generate", "--max-new-tokens", "0", "'0' is not a whole number >= 1"),
        ("influence", "--delta-influence", "x", "'x' is not a number"),
        ("influence", "--window", "many", "'many' is not a whole number"),
    ],
)
def test_a_bad_number_names_the_option_and_the_value(no_loading, command, option, value, message) -> None:
    prompt = PROMPT if command == "generate" else SPAN_PROMPT
    result = invoke(command, prompt, option, value)
    assert result.exit_code == 2
    assert result.stderr.endswith(f"Error: Invalid value for '{option}': {message}\n")
    assert "─" not in result.stderr  # plain text, no box


def test_max_new_tokens_beyond_the_context_is_capped_with_a_warning_before_loading(monkeypatch) -> None:
    assert engine_cli.cap_max_new_tokens(8191, 8192) == 8191
    assert engine_cli.cap_max_new_tokens(10**9, None) == 10**9
    loads = []

    def load_engine(model, gguf_file, **settings):
        loads.append(model)
        raise GuideError("stopped where the model would load")

    monkeypatch.setattr(engine_cli, "load_engine", load_engine)
    result = invoke("generate", "", "--max-new-tokens", "1000000000")
    assert (result.stderr.startswith("error: PROMPT is empty"), loads) == (True, []), "a bad prompt still fails first"
    result = invoke("generate", PROMPT, "--max-new-tokens", "1000000000")
    assert result.stderr == (
        "warning: --max-new-tokens 1000000000 is more than the model's context of 8192 tokens allows; "
        "the answer stops where prompt and answer fill the context\n"
        "error: stopped where the model would load\n"
    )
    assert loads == ["default"]
    assert (
        invoke("generate", PROMPT, "--max-new-tokens", "8191").stderr == "error: stopped where the model would load\n"
    )


def test_max_new_tokens_beyond_the_context_generates_until_the_context_is_full(tiny_folder: Path) -> None:
    """A tiny random model (context 40) never stops by itself: it gets 40 minus the prompt's tokens."""
    result = invoke("generate", "Hello", "--model", str(tiny_folder), "--max-new-tokens", "1000", "--json")
    assert result.exit_code == 0, result.stderr
    assert result.stderr == (  # and no "Loading weights" bar without --verbose
        "warning: --max-new-tokens 1000 is more than the model's context of 40 tokens allows; "
        "the answer stops where prompt and answer fill the context\n"
    )
    data = json.loads(result.stdout)
    assert data["prompt_tokens"] + data["completion_tokens"] == 40
    assert data["finish_reason"] == "length"


# ------------------------------------------------------------------------ --version, --help, import cost


def test_version_prints_the_installed_version() -> None:
    result = runner.invoke(guide_app, ["--version"])
    assert (result.exit_code, result.stdout) == (
        0,
        f"guide-attention {importlib.metadata.version('guide-attention')}\n",
    )


def test_the_command_list_is_the_commands_own_help() -> None:
    """``guide --help`` lists the engine's commands without importing them: the same words as their docstrings."""
    commands = engine_commands()
    assert sorted(ENGINE_COMMANDS) == sorted(commands)
    for name, short in ENGINE_COMMANDS.items():
        assert commands[name].get_short_help_str(1000) == short
    result = runner.invoke(guide_app, ["--help"])
    assert result.exit_code == 0
    listing = " ".join(result.stdout.split("Commands:")[1].split())
    assert listing == (
        "generate " + ENGINE_COMMANDS["generate"] + " influence " + ENGINE_COMMANDS["influence"] + " serve "
        "Serve MODEL with GUIDE through vLLM's OpenAI-compatible server."
    )


@pytest.mark.parametrize("command", ["generate", "influence", "serve"])
def test_help_shows_every_option_in_full_and_flags_without_a_type(command: str) -> None:
    result = runner.invoke(guide_app, [command, "--help"], terminal_width=80)
    assert result.exit_code == 0
    assert result.stdout.startswith(f"Usage: guide {command} [OPTIONS]")
    flat = " ".join(result.stdout.split())
    params = typer.main.get_group(guide_app).get_command(None, command).params
    assert [p.name for p in params if getattr(p, "help", None) and " ".join(p.help.split()) not in flat] == []
    assert "..." not in result.stdout  # click's mark of a shortened text
    assert "<bool>" not in result.stdout and "BOOLEAN" not in result.stdout
    if command != "serve":
        (json_line,) = [line for line in result.stdout.splitlines() if line.lstrip().startswith("--json ")]
        assert json_line.split()[:2] == ["--json", "Print"]


@pytest.mark.parametrize("flag", ["--help", "--version"])
def test_help_and_version_import_no_torch(flag: str) -> None:
    code = (
        "import sys\n"
        "from guide_integrations.cli import app\n"
        f"sys.argv = ['guide', {flag!r}]\n"
        "try:\n"
        "    app()\n"
        "except SystemExit as done:\n"
        "    assert done.code in (0, None), done.code\n"
        "print(sorted(m for m in ('torch', 'transformers', 'guide_engine', 'rich') if m in sys.modules))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[-1] == "[]"
    assert ("Commands:" if flag == "--help" else "guide-attention ") in done.stdout


MODEL_FREE_ERRORS = {
    ("generate", ""): "error: PROMPT is empty: give the text to send, or '-' to read it from stdin",
    ("generate", BAD_TAGS): "error: closing tag '<-!>' at position 25",
    ("generate", PROMPT, "--layers", "1,x"): "error: --layers must be 'all' or comma-separated layer indices",
    ("generate", PROMPT, "--temperature=-1"): "error: --temperature must be >= 0 (0 = greedy), got -1.0",
    ("generate", PROMPT, "--top-p", "1.5"): "error: --top-p must be in (0, 1], got 1.5",
    ("generate", PROMPT, "--threads", "0"): "Error: Invalid value for '--threads': '0' is not a whole number >= 1",
    ("influence", "no span here"): "error: guide influence needs an influence span",
    # the embedded model's layer count comes from its GGUF header: no torch either
    ("generate", PROMPT, "--layers", "0,99"): "error: --layers: layer 99 is out of range; this model has layers 0..29",
    ("generate", "Hi", "--model", "/no/such/folder"): "error: could not load model '/no/such/folder': there is no such",
}


def test_bad_input_is_answered_before_torch_is_imported(tiny_folder: Path) -> None:
    """The console script's ``main`` in a fresh interpreter: each error arrives while torch is still unimported.

    Then a good command line in the same process loads a model: ``load_engine`` completes the package.
    """
    code = (
        "import json, sys\n"
        "from guide_integrations.cli import app\n"
        f"for args in {[list(args) for args in MODEL_FREE_ERRORS]!r}:\n"
        "    try:\n"
        "        app(args, prog_name='guide')\n"
        "    except SystemExit as done:\n"
        "        print(json.dumps([done.code, 'torch' in sys.modules, 'transformers' in sys.modules]), flush=True)\n"
        "        print('END', file=sys.stderr, flush=True)\n"
        f"app(['generate', 'Hello', '--model', {str(tiny_folder)!r}, '--max-new-tokens', '2', '--json'],"
        " standalone_mode=False)\n"
        "import guide_engine\n"
        "print(json.dumps(['torch' in sys.modules, hasattr(guide_engine, 'GuideEngine')]))\n"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.splitlines()
    errors = done.stderr.split("END\n")
    for index, (args, message) in enumerate(MODEL_FREE_ERRORS.items()):
        assert json.loads(lines[index]) == [2, False, False], (args, errors[index])
        assert message in errors[index], (args, errors[index])
    assert json.loads(lines[-1]) == [True, True]
    assert json.loads("\n".join(lines[len(MODEL_FREE_ERRORS) : -1]))["completion_tokens"] == 2


def test_threads_and_verbose_reach_the_load(monkeypatch) -> None:
    """``--threads`` sets torch's threads before the load; transformers' bars show only with ``--verbose``."""
    from transformers.utils import logging as transformers_logging

    import guide_engine.registry

    seen = []

    def shared_engine(model, **load_kwargs):
        seen.append((torch.get_num_threads(), transformers_logging.is_progress_bar_enabled()))
        raise GuideError("stopped where the model would load")

    threads = torch.get_num_threads()
    monkeypatch.setattr(guide_engine.registry, "shared_engine", shared_engine)
    try:
        assert invoke("generate", PROMPT, "--threads", "1").stderr == "error: stopped where the model would load\n"
        assert transformers_logging.is_progress_bar_enabled()  # put back after the load
        invoke("influence", SPAN_PROMPT, "--threads", "3", "--verbose")
    finally:
        torch.set_num_threads(threads)
    assert seen == [(1, False), (3, True)]


def test_the_installed_command_runs_the_engines_commands() -> None:
    result = runner.invoke(guide_app, ["generate", BAD_TAGS])
    assert result.exit_code == 2
    assert result.stderr.startswith("error: closing tag '<-!>' at position 25")


# ---------------------------------------------------------------------------------- with the model


@pytest.mark.real_model
def test_generate_with_repetition_penalty_and_json_schema_equals_engine(engine, tmp_path: Path) -> None:
    schema = {"type": "object", "properties": {"color": {"enum": ["red", "green"]}}, "required": ["color"]}
    fmt = {"type": "json_schema", "json_schema": {"name": "cli", "schema": schema}}
    expected = engine.generate(PROMPT, max_new_tokens=12, repetition_penalty=1.3, response_format=fmt)
    path = tmp_path / "schema.json"
    path.write_text(json.dumps(schema))
    for value in (str(path), json.dumps(schema)):
        result = invoke(
            "generate", PROMPT, "--max-new-tokens", "12", "--repetition-penalty", "1.3", "--json-schema", value
        )
        assert result.exit_code == 0, result.stderr
        assert result.stdout == printed(expected.text) and json.loads(result.stdout)["color"] in ("red", "green")


@pytest.mark.real_model
def test_generate_from_argument_and_stdin_equals_engine_greedy(engine) -> None:
    expected = engine.generate(PROMPT, max_new_tokens=4, delta_mid=2.0, temperature=0.0).text
    options = ("--max-new-tokens", "4", "--delta-mid", "2")
    from_argument = invoke("generate", PROMPT, *options)
    assert from_argument.exit_code == 0, from_argument.stderr
    assert from_argument.stdout == printed(expected)
    from_stdin = invoke("generate", *options, input=PROMPT + "\n")
    assert (from_stdin.exit_code, from_stdin.stdout) == (0, printed(expected))
    from_dash = invoke("generate", "-", *options, input=PROMPT)
    assert (from_dash.exit_code, from_dash.stdout) == (0, printed(expected))


@pytest.mark.real_model
def test_generate_steering_options_equal_engine(engine) -> None:
    options = {"max_new_tokens": 6, "contrast": 4.0, "delta_queries": "output"}
    expected = engine.generate(PROMPT, **options).text
    assert expected != engine.generate(PROMPT, max_new_tokens=6).text, "the options must matter on this prompt"
    result = invoke("generate", PROMPT, "--max-new-tokens", "6", "--contrast", "4", "--delta-queries", "output")
    assert (result.exit_code, result.stdout) == (0, printed(expected)), result.stderr
    auto = invoke("generate", PROMPT, "--max-new-tokens", "6", "--contrast", "auto")  # short prompt: γ = 0
    assert (auto.exit_code, auto.stdout) == (0, printed(engine.generate(PROMPT, max_new_tokens=6).text))


@pytest.mark.real_model
def test_generate_json_with_system_and_stop_equals_engine(engine) -> None:
    messages = [{"role": "system", "content": "You answer <!->briefly<-!>."}, {"role": "user", "content": PROMPT}]
    reference = engine.generate(messages, max_new_tokens=6, stop=[" beautiful"], layers=[0, 1, 2])
    result = invoke(
        "generate",
        PROMPT,
        "--system",
        messages[0]["content"],
        "--max-new-tokens",
        "6",
        "--stop",
        " beautiful",
        "--layers",
        "0,1,2",
        "--json",
    )
    assert result.exit_code == 0, result.stderr
    data = json.loads(result.stdout)
    assert data == {
        "model": "default",
        "text": reference.text,
        "prompt_tokens": reference.prompt_tokens,
        "completion_tokens": reference.completion_tokens,
        "finish_reason": reference.finish_reason,
        "spans": [s.to_dict() for s in reference.spans],
        "token_ids": reference.token_ids,
    }
    assert [s["delta"] for s in data["spans"]] == [0.5, 1.0]
    assert data["finish_reason"] == "stop" and " beautiful" not in data["text"]  # the stop string was hit


@pytest.mark.real_model
def test_influence_writes_png_and_html_and_prints_the_table(engine, tmp_path: Path) -> None:
    reference = engine.generate(SPAN_PROMPT, max_new_tokens=5, metric="influence").influence
    files = {ext: tmp_path / f"out.{ext}" for ext in ("png", "html")}
    result = invoke(
        "influence",
        SPAN_PROMPT,
        "--max-new-tokens",
        "5",
        "--plot",
        str(files["png"]),
        "--html",
        str(files["html"]),
        "--layers-to-plot",
        "0,29",
    )
    assert result.exit_code == 0, result.stderr
    assert files["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    page = files["html"].read_text(encoding="utf-8")
    assert page.startswith("<!DOCTYPE html>") and 'id="influence-data"' in page
    assert result.stderr.splitlines() == [f"wrote {files['png']}", f"wrote {files['html']}"]
    # The summary table: one row per decoder layer with the mean over generated tokens.
    rows = {}
    for line in result.stdout.splitlines():
        cells = [c.strip() for c in line.strip("│ ").split("│")]
        if len(cells) == 3 and cells[0].lstrip("-").isdigit():
            rows[int(cells[0])] = cells[1]
    assert sorted(rows) == list(range(engine.num_layers))
    start = reference.generation_start
    for layer in (0, 29):
        assert rows[layer] == f"{reference[layer][start:].float().mean().item():.4g}"
    generated_text = engine.tokenizer.decode(reference.token_ids[start:], skip_special_tokens=True)
    assert result.stdout.startswith(printed(generated_text))


@pytest.mark.real_model
@pytest.mark.parametrize("metric", ["influence", "attention_rollout"])
def test_influence_json_is_generates_json_plus_the_influence(engine, metric: str) -> None:
    """``--json`` means the same in both commands: the result as JSON on stdout, here with ``influence`` added."""
    reference = engine.generate(SPAN_PROMPT, max_new_tokens=3, metric=metric)
    result = invoke("influence", SPAN_PROMPT, "--metric", metric, "--max-new-tokens", "3", "--json")
    assert (result.exit_code, result.stderr) == (0, "")
    data = json.loads(result.stdout)
    loaded = InfluenceResult.from_dict(data.pop("influence"))
    expected = engine_cli.result_json(reference, "default")
    del expected["influence"]
    assert data == expected
    assert loaded.tokens == reference.influence.tokens and loaded.spans == reference.influence.spans
    assert (loaded.generation_start, loaded.metric) == (reference.influence.generation_start, metric)
    assert sorted(loaded) == list(range(-1, engine.num_layers))
    for layer in reference.influence:
        torch.testing.assert_close(loaded[layer], reference.influence[layer].float(), rtol=1e-6, atol=1e-7)


@pytest.mark.real_model
def test_installed_console_script(engine) -> None:
    """The real `guide` executable: streams greedy text to stdout; bad tags exit 2 without a traceback."""
    command = guide_command()
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    bad = subprocess.run([command, "generate", BAD_TAGS], capture_output=True, text=True, timeout=120, env=env)
    assert bad.returncode == 2
    assert bad.stderr.startswith("error: closing tag '<-!>' at position 25") and "Traceback" not in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1
    expected = engine.generate(PROMPT, max_new_tokens=3).text
    good = subprocess.run(
        [command, "generate", "--max-new-tokens", "3"],
        input=PROMPT,
        capture_output=True,
        text=True,
        timeout=400,
        env=env,
    )
    assert good.returncode == 0, good.stderr[-2000:]
    assert good.stdout == printed(expected)
