"""Tests of the ``guide`` console script (guide_engine.cli), in-process and as the installed command."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from guide_engine import InfluenceResult, TagError, shared_engine
from guide_engine.cli import app

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
def test_influence_writes_png_html_json_and_prints_the_table(engine, tmp_path: Path) -> None:
    reference = engine.generate(SPAN_PROMPT, max_new_tokens=5, metric="influence").influence
    files = {ext: tmp_path / f"out.{ext}" for ext in ("png", "html", "json")}
    result = invoke(
        "influence",
        SPAN_PROMPT,
        "--max-new-tokens",
        "5",
        "--plot",
        str(files["png"]),
        "--html",
        str(files["html"]),
        "--json",
        str(files["json"]),
        "--layers-to-plot",
        "0,29",
    )
    assert result.exit_code == 0, result.stderr
    assert files["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    page = files["html"].read_text(encoding="utf-8")
    assert page.startswith("<!DOCTYPE html>") and 'id="influence-data"' in page
    assert result.stderr.splitlines() == [f"wrote {files['png']}", f"wrote {files['html']}", f"wrote {files['json']}"]
    loaded = InfluenceResult.from_dict(json.loads(files["json"].read_text(encoding="utf-8")))
    assert loaded.tokens == reference.tokens and loaded.spans == reference.spans
    assert (loaded.generation_start, loaded.metric) == (reference.generation_start, "influence")
    assert sorted(loaded) == list(range(-1, engine.num_layers))
    for layer in reference:
        torch.testing.assert_close(loaded[layer], reference[layer].float(), rtol=1e-6, atol=1e-7)
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
def test_influence_rollout_and_bad_plot_layer(engine, tmp_path: Path) -> None:
    result = invoke("influence", SPAN_PROMPT, "--layers-to-plot", "0,99", "--max-new-tokens", "1")
    assert (result.exit_code, result.stderr) == (
        2,
        f"error: --layers-to-plot: layer 99 is out of range; this model has layers -1..{engine.num_layers - 1}\n",
    )
    target = tmp_path / "rollout.json"
    result = invoke(
        "influence", SPAN_PROMPT, "--metric", "attention_rollout", "--max-new-tokens", "1", "--json", str(target)
    )
    assert result.exit_code == 0, result.stderr
    loaded = InfluenceResult.from_dict(json.loads(target.read_text(encoding="utf-8")))
    assert loaded.metric == "attention_rollout" and "rollout over 1 generated tokens" in result.stdout


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
