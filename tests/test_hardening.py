"""Hardening on tiny models and the tokenizer alone: hostile tags, look-alikes, seams, bad values, a short soak.

Every test states a property that can fail. Tests marked ``xfail(strict=True)`` pin a known limitation
(README, section "Reliability"): they fail today, and the day it is lifted they XPASS, which fails the
run so the marker and the README get updated together.
"""

from __future__ import annotations

import asyncio
import ctypes
import gc
import json
import math
import os
import re
import subprocess
import sys
import textwrap
import threading
import time
import warnings
from pathlib import Path

import psutil
import pytest
import torch
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from guide_engine import ContextLengthError, GuideEngine, GuideError, TagError, escape_tags, parse_tags, strip_tags
from guide_engine.attention import MAX_ABS_BIAS
from tests.reference import tiny_model

ROOT = Path(__file__).resolve().parents[1]
OPENERS = {"<!->": "<-!>", "<!!->": "<-!!>", "<!!!->": "<-!!!>", "<?->": "<-?>"}
MARKERS = [*OPENERS, *OPENERS.values()]
PROMPT = "<!!-> Answer in French. <-!!> What is the capital of Italy?"


@pytest.fixture(scope="module")
def engine(smol_tokenizer) -> GuideEngine:
    """A tiny random Llama on SmolLM2's real tokenizer and chat template."""
    torch.manual_seed(0)
    return GuideEngine(tiny_model("llama"), smol_tokenizer, max_new_tokens=6)


def chat_ids(tokenizer, content: str) -> list[int]:
    """Token ids of ``content`` as one user message through the chat template (no tag handling at all)."""
    rendered = tokenizer.apply_chat_template(
        [{"role": "user", "content": content}], add_generation_prompt=True, tokenize=True, return_dict=True
    )
    return list(rendered["input_ids"])


def quiet(func, *args):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # empty spans are dropped with a warning
        return func(*args)


# ============================================================= tags never change the token ids

# Letters, digits, punctuation and spaces of any script, plus the characters tags are made of and a
# few that tokenizers treat specially (newlines, tabs, emoji, combining marks, CJK).
TEXT = st.text(
    alphabet=st.one_of(
        st.characters(whitelist_categories=("L", "N", "P", "S", "Zs", "Mn"), max_codepoint=0x1FAFF),
        st.sampled_from(list("<>!?-\\ \n\t") + ["é", "中", "😀", "\u0301", "ﬁ"]),
    ),
    max_size=12,
)
# A prompt as pieces: plain text (None) or the text of a span opened by one of the four openers.
PIECES = st.lists(st.tuples(st.one_of(st.none(), st.sampled_from(list(OPENERS))), TEXT), min_size=1, max_size=6)


def assemble(pieces: list[tuple[str | None, str]]) -> str:
    """A well-formed tagged prompt: every text piece escaped, tags placed around some of them."""
    out, plain = [], ""
    for opener, text in pieces:
        if opener is None:
            plain += text  # adjacent plain pieces are escaped as one string
            continue
        out.append(escape_tags(plain) + opener + escape_tags(text) + OPENERS[opener])
        plain = ""
    return "".join(out) + escape_tags(plain)


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(PIECES)
@example([("<!->", "a")])
@example([(None, "<!-> not a tag <-!>"), ("<?->", " 中😀 "), (None, "\\")])
def test_token_ids_never_change_with_tags(engine, smol_tokenizer, pieces):
    tagged = assemble(pieces)
    visible = quiet(strip_tags, tagged)
    if not visible.strip():
        return  # an empty prompt is refused before tokenization (tested in test_engine)
    encoded = quiet(engine.encode, tagged)
    assert encoded.input_ids == chat_ids(smol_tokenizer, visible)
    assert len(encoded.token_deltas) == len(encoded.input_ids)


def content_offset(tokenizer, messages: list[dict[str, str]], index: int) -> int:
    """Where message ``index``'s content starts in the rendered prompt, found with a sentinel."""
    sentinel = "\x00\x01"
    probe = [{**m, "content": sentinel if i == index else m["content"]} for i, m in enumerate(messages)]
    rendered = tokenizer.apply_chat_template(probe, tokenize=False, add_generation_prompt=True)
    return rendered.index(sentinel)


def expected_token_range(tokenizer, text: str, start: int, end: int) -> tuple[int, int]:
    offsets = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
    tokens = [t for t, (a, b) in enumerate(offsets) if b > a and a < end and b > start]
    return tokens[0], tokens[-1] + 1


# Regression: message contents were once located with rendered.find(), so a span whose message text
# also occurs earlier in the rendered template ('a' in '<|im_start|>', ' helpful ' in SmolLM2's default
# system prompt, 'user' in the role header) was biased on the template's tokens instead.
@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(PIECES)
@example([("<!->", "a")])  # 'a' also occurs in '<|im_start|>'
@example([("<!!->", " helpful ")])  # also in SmolLM2's default system prompt, rendered before the message
def test_spans_cover_the_tokens_of_their_own_text(engine, smol_tokenizer, pieces):
    tagged = assemble(pieces)
    visible = quiet(strip_tags, tagged)
    if not visible.strip():
        return
    encoded = quiet(engine.encode, tagged)
    parsed = quiet(parse_tags, tagged)
    base = content_offset(smol_tokenizer, [{"role": "user", "content": visible}], 0)
    assert len(encoded.spans) == len(parsed.spans)
    for applied, span in zip(encoded.spans, parsed.spans):
        expected = expected_token_range(smol_tokenizer, encoded.text, base + span.start, base + span.end)
        assert (applied.token_start, applied.token_end) == expected, (span.text, encoded.text)


@pytest.mark.parametrize(
    ("messages", "index"),
    [
        ([{"role": "system", "content": "<!->s<-!>"}, {"role": "user", "content": "Hi"}], 0),  # 's' of 'system'
        ([{"role": "user", "content": "<!!->user<-!!>"}], 0),  # 'user' of the role header
        ([{"role": "user", "content": "<!-> helpful <-!>"}], 0),  # the default system prompt's ' helpful '
        ([{"role": "system", "content": "Hi"}, {"role": "user", "content": "<!->im_end<-!>"}], 1),  # '<|im_end|>'
    ],
)
def test_a_span_lands_on_its_own_message_not_on_the_template(engine, smol_tokenizer, messages, index):
    encoded = engine.encode(messages)
    clean = [{**m, "content": strip_tags(m["content"])} for m in messages]
    span = parse_tags(messages[index]["content"]).spans[0]
    base = content_offset(smol_tokenizer, clean, index)
    expected = expected_token_range(smol_tokenizer, encoded.text, base + span.start, base + span.end)
    assert (encoded.spans[0].token_start, encoded.spans[0].token_end) == expected


# ====================================================================== unicode look-alikes

LOOKALIKES = [
    "＜!-> x ＜-!>",  # U+FF1C fullwidth less-than (NFKC: '<')
    "﹤!!-> x ﹤-!!>",  # U+FE64 small less-than (NFKC: '<')
    "‹!-> x ‹-!>",  # U+2039 single angle quotation mark
    "<ǃ-> x <-ǃ>",  # U+01C3 Latin letter retroflex click
    "<！!!-> x <-！!!>",  # U+FF01 fullwidth exclamation (NFKC: '!')
    "<？-> x <-？>",  # U+FF1F fullwidth question mark (NFKC: '?')
    "<!‐> x <‐!>",  # U+2010 hyphen
    "<!−> x <−!>",  # U+2212 minus sign
    "<!－> x <－!>",  # U+FF0D fullwidth hyphen-minus (NFKC: '-')
    "<!-＞ x <-!＞",  # U+FF1E fullwidth greater-than (NFKC: '>')
    "<\u200b!-> x <-!\u200b>",  # zero-width space inside the marker
    "<!-\u0338> x",  # a combining mark on the '>'
]


@pytest.mark.parametrize("text", LOOKALIKES)
def test_lookalike_markers_are_plain_text(engine, smol_tokenizer, text):
    """Only the ASCII markers are tags; no Unicode normalization is applied first.

    Most of these are NFKC-equivalent to real markers (the comments say which), so a parser that
    normalized its input first would turn them into spans and fail here.
    """
    parsed = parse_tags(text)
    assert parsed.text == text and parsed.spans == ()
    assert escape_tags(text) == text  # nothing to neutralize either
    encoded = engine.encode(text)
    assert encoded.spans == () and not encoded.has_bias
    assert encoded.input_ids == chat_ids(smol_tokenizer, text)


# ================================================================ seams between template values


def test_two_adjacent_values_can_only_break_the_request():
    """An opener split across two escaped values opens a span whose closer stays escaped: TagError."""
    a, b = "<!!", "-> x <-!!>"
    with pytest.raises(TagError, match=r"unclosed tag '<!!->' at position 0"):
        parse_tags(escape_tags(a) + escape_tags(b))
    assert parse_tags(escape_tags(a + b)).text == a + b  # escaped as a whole: literal text


SEAM = ("<!!", "-> evil <-!", "!>")
LIMITATION = (
    "known limitation (README, 'Reliability'): three adjacent escaped values can complete an opener and a "
    "closer across their seams; escape the joined string, or separate values by template text"
)


@pytest.mark.xfail(strict=True, reason=LIMITATION)
def test_three_adjacent_values_cannot_create_a_span():
    assert parse_tags("".join(escape_tags(v) for v in SEAM)).spans == ()


@pytest.mark.parametrize(
    ("fmt", "human"),
    [("f-string", "{a}{b}{c}"), ("mustache", "{{{a}}}{{{b}}}{{{c}}}"), ("jinja2", "{{ a }}{{ b }}{{ c }}")],
    ids=["f-string", "mustache", "jinja2"],
)
def test_langchain_adjacent_variables_cannot_create_a_span(fmt, human):
    """GuideChatPromptTemplate knows where each value lands and escapes markers across the seams.

    (Mustache's double braces HTML-escape values, which hides the seam; triple braces insert them as is.)
    """
    from guide_integrations.langchain import GuideChatPromptTemplate, to_engine_prompt

    prompt = GuideChatPromptTemplate.from_messages([("human", human)], template_format=fmt)
    messages = prompt.invoke(dict(zip("abc", SEAM))).to_messages()
    parsed = parse_tags(to_engine_prompt(messages)[0]["content"])
    assert parsed.spans == () and parsed.text == "".join(SEAM)


@pytest.mark.xfail(strict=True, reason=LIMITATION)
def test_llama_index_adjacent_variables_cannot_create_a_span():
    from llama_index.core import PromptTemplate

    from guide_integrations.llama_index import escaped_template_args

    template, args = escaped_template_args(PromptTemplate("{a}{b}{c}"), dict(zip("abc", SEAM)))
    assert parse_tags(template.format(**args)).spans == ()


# Anything an attacker may put in a value: markers, escaped markers, fragments, backslashes, text.
FRAGMENTS = [*MARKERS, *("<\\" + m[1:] for m in MARKERS), "<", "<!", "<!!", "<\\", "\\", "-", "!", "?", ">", "->", "<-"]
VALUE = st.lists(st.one_of(st.sampled_from(FRAGMENTS), st.text(max_size=3)), max_size=12).map("".join)
# Template text next to a value: any text without the characters markers are made of ('<', '\\', '!',
# '?', '-', '>'), so it can neither end an incomplete marker nor continue one.
SAFE = st.text(alphabet=st.characters(blacklist_characters="<\\!?->", max_codepoint=0x2FFF), min_size=1, max_size=4)


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(SAFE, VALUE), min_size=1, max_size=5), SAFE)
def test_values_separated_by_template_text_never_create_spans(parts, tail):
    """The guarantee: escaped values with template text between them are read verbatim, no span."""
    template = "".join(sep + escape_tags(value) for sep, value in parts) + tail
    parsed = parse_tags(template)
    assert parsed.text == "".join(sep + value for sep, value in parts) + tail
    assert parsed.spans == ()


@settings(max_examples=100, deadline=None)
@given(st.lists(VALUE, min_size=1, max_size=5), st.sampled_from(list(OPENERS)))
def test_values_between_the_templates_own_tags_keep_exactly_those_tags(values, opener):
    """Adjacent to a complete template tag is safe too: tags end with '>' and start with '<'."""
    template = "".join(opener + escape_tags(v) + OPENERS[opener] for v in values)
    parsed = quiet(parse_tags, template)
    assert parsed.text == "".join(values)
    assert [s.text for s in parsed.spans] == [v for v in values if v.strip()]


# ================================================================== hostile sizes through encode

MB = 1_000_000


def test_one_megabyte_prompt_is_refused_for_length_in_bounded_time(engine):
    """A 1 MB prompt (one span around all of it) is parsed, rendered, tokenized and refused for length."""
    text = "<!!->" + "one huge span of words. " * (MB // 24) + "<-!!>"
    started = time.perf_counter()
    with pytest.raises(ContextLengthError, match=r"prompt has \d{6} tokens but the model's context is 512 tokens"):
        engine.generate(text)
    elapsed = time.perf_counter() - started
    assert elapsed < 60, f"{elapsed:.1f} s to refuse 1 MB"
    assert engine.generate(PROMPT, max_new_tokens=2).completion_tokens >= 1  # still usable


def run_bounded(func, seconds: float):
    """``func()`` in a thread; past ``seconds`` a TimeoutError is raised inside it (pure-Python loops stop)."""
    outcome: dict = {}

    def target() -> None:
        try:
            outcome["value"] = func()
        except BaseException as error:  # noqa: BLE001 - handed back to the caller
            outcome["error"] = error

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(seconds)
    if thread.is_alive():  # do not leave a runaway loop burning the CPU for the rest of the session
        ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(thread.ident), ctypes.py_object(TimeoutError))
        thread.join(60)
        raise TimeoutError(f"still running after {seconds} s")
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


# Regression: spans were once matched against every token offset, O(spans x tokens), so 1 MB of dense
# spans took hours before the context-length check refused it.
def test_one_megabyte_of_dense_spans_is_refused_in_bounded_time(engine):
    def refuse() -> str:
        with pytest.raises(ContextLengthError) as info:
            quiet(engine.generate, "<!->ab<-!> " * (MB // 11))
        return str(info.value)

    assert run_bounded(refuse, 30).startswith("prompt has ")


# ====================================================================================== bad Δ


def _logits(engine: GuideEngine, prompt: str, **options) -> tuple[list[int], list[torch.Tensor]]:
    """Generate, keeping every step's logits through a read-only forward hook."""
    seen: list[torch.Tensor] = []
    handle = engine.model.register_forward_hook(lambda module, args, output: seen.append(output.logits.detach()))
    try:
        result = engine.generate(prompt, **options)
    finally:
        handle.remove()
    return result.token_ids, seen


@pytest.fixture(scope="module")
def half_engine(smol_tokenizer) -> GuideEngine:
    """The same tiny Llama in float16, where Δ·√head_dim overflows from Δ ≈ 23,000 (head size 8)."""
    torch.manual_seed(0)
    return GuideEngine(tiny_model("llama").half(), smol_tokenizer, max_new_tokens=6)


# Once a bug: any finite Δ was accepted and Δ·√head_dim overflowed the attention dtype (float32 from
# ~1.2e38 here, float16 from ~2.3e4), giving NaN logits and token 0 forever. The engine now caps |Δ| at
# MAX_ABS_BIAS, where the softmax is already saturated.
@pytest.mark.parametrize("precision", ["float32", "float16"])
@pytest.mark.parametrize(
    ("delta", "heads"), [(1e5, None), (1e30, None), (1.5e38, None), (1e300, None), (-1e300, [0]), (1e30, [1, 3])]
)
def test_a_delta_beyond_the_cap_acts_as_the_cap_and_stays_finite(engine, half_engine, precision, delta, heads):
    model = engine if precision == "float32" else half_engine
    tokens, logits = _logits(model, PROMPT, delta_mid=delta, heads=heads, max_new_tokens=2)
    assert all(bool(torch.isfinite(x).all()) for x in logits)
    cap = math.copysign(MAX_ABS_BIAS, delta)
    capped_tokens, capped = _logits(model, PROMPT, delta_mid=cap, heads=heads, max_new_tokens=2)
    assert tokens == capped_tokens and all(torch.equal(a, b) for a, b in zip(logits, capped))
    _, plain = _logits(model, PROMPT, delta_mid=1.0, heads=heads, max_new_tokens=2)
    assert not torch.equal(plain[0], logits[0])  # the bias did act, so the equality above means something


# ============================================================================ unknown models


def _offline() -> dict[str, str]:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


@pytest.mark.parametrize(
    "model",
    ["no/such-model", "/nonexistent/folder/model.gguf", "/nonexistent/folder"],
    ids=["hub-id", "gguf", "folder"],
)
def test_an_unknown_model_is_a_guide_error_naming_it(model, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    expected = rf"(?s)could not load model {re.escape(repr(model))}: .*Pass 'default' for the embedded model"
    if model.endswith(".gguf"):  # a missing file is named as such, not as an unknown hub id
        expected = rf"model {re.escape(repr(model))} ends in .gguf but there is no such file"
    with pytest.raises(GuideError, match=expected):
        GuideEngine.from_pretrained(model)


def test_unknown_models_fail_the_same_way_through_both_integrations(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    from langchain_core.messages import HumanMessage

    from guide_integrations.langchain import ChatGuide
    from guide_integrations.llama_index import GuideLLM

    with pytest.raises(GuideError, match="could not load model 'no/such-model'"):
        ChatGuide(model="no/such-model").invoke([HumanMessage("hi")])
    with pytest.raises(GuideError, match="could not load model 'no/such-model'"):
        GuideLLM(model="no/such-model")


# ========================================================================= missing extras


def test_missing_extras_fail_at_import_with_the_pip_command():
    """With langchain-core and llama-index-core hidden, each integration fails at import with its pip command.

    torch and transformers are hidden too and ``guide_engine`` is reduced to its error module: the error
    must come before anything heavy is imported (and the subprocess starts in a second).
    """
    script = textwrap.dedent(
        f"""
        import json, sys, types
        sys.path.insert(0, {str(ROOT)!r})
        for name in ("langchain_core", "llama_index", "llama_index.core", "torch", "transformers"):
            sys.modules[name] = None  # import raises ImportError, as when the package is absent
        engine = types.ModuleType("guide_engine")
        engine.__path__ = [{str(ROOT / "guide_engine")!r}]
        sys.modules["guide_engine"] = engine
        from guide_engine.errors import MissingDependencyError
        engine.MissingDependencyError = MissingDependencyError
        out = {{}}
        for module in ("guide_integrations.langchain", "guide_integrations.llama_index"):
            try:
                __import__(module)
                out[module] = None
            except ImportError as error:
                out[module] = [type(error).__name__, str(error), isinstance(error, MissingDependencyError)]
        print(json.dumps(out))
        """
    )
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, env=_offline())
    assert run.returncode == 0, run.stderr[-2000:]
    out = json.loads(run.stdout.strip().splitlines()[-1])
    assert out["guide_integrations.langchain"] == [
        "MissingDependencyError",
        'guide_integrations.langchain needs langchain-core; install it with `pip install "guide-attention[langchain]"`',
        True,
    ]
    kind, message, is_missing = out["guide_integrations.llama_index"]
    assert (kind, is_missing) == ("MissingDependencyError", True)
    assert "`pip install 'guide-attention[llama-index]'`" in message and "llama-index-core" in message


# ================================================================================ short soak


def _fds(process: psutil.Process) -> int:
    return process.num_fds() if hasattr(process, "num_fds") else process.num_handles()


async def _integration_request(i: int, chat, llm, engine: GuideEngine) -> None:
    """One async request through an integration: finished, abandoned after a piece, or cancelled."""
    kind = i % 4
    if kind == 0:
        await chat.ainvoke(PROMPT, delta_mid=0.5 * (i % 5))
    elif kind == 1:
        async for _ in chat.astream("<!-> Count <-!> to twenty.", max_tokens=12):
            break  # abandoned: the generator is finalized by the event loop
    elif kind == 2:
        started = asyncio.Event()

        async def consume() -> None:
            stream = await llm.astream_complete("<?-> Tell <-?> a story.", max_new_tokens=12)
            async for _ in stream:
                started.set()

        task = asyncio.create_task(consume())
        await started.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    else:
        await llm.acomplete("<!!!-> Numbers only. <-!!!> Count.", delta_mid=-1.0)


def test_short_soak_returns_threads_and_files_to_baseline_and_memory_stays_flat(smol_tokenizer):
    """60 mixed requests (engine and both integrations, faults, abandoned and cancelled streams)."""
    from benchmarks.soak import one_request
    from guide_integrations.langchain import ChatGuide
    from guide_integrations.llama_index import GuideLLM

    torch.manual_seed(0)
    engine = GuideEngine(tiny_model("qwen2"), smol_tokenizer, max_new_tokens=4)
    chat = ChatGuide(model=engine, max_tokens=4)
    llm = GuideLLM(engine=engine, max_new_tokens=4)
    process = psutil.Process()
    reference = engine.generate(PROMPT, delta_mid=2.0)

    def settled() -> tuple[int, int]:
        deadline = time.monotonic() + 10  # worker threads of finished streams shut down asynchronously
        while True:
            gc.collect()
            now = (threading.active_count(), _fds(process))
            if now <= baseline or time.monotonic() > deadline:
                return now
            time.sleep(0.1)

    async def mixed(start: int, stop: int) -> None:
        for i in range(start, stop):
            if i % 2:
                await asyncio.to_thread(one_request, engine, i, 4)  # generate/stream/batch/influence/faults
            else:
                await _integration_request(i // 2, chat, llm, engine)

    baseline = (threading.active_count(), _fds(process))
    asyncio.run(mixed(0, 20))  # warm-up
    gc.collect()
    warm_rss = process.memory_info().rss
    asyncio.run(mixed(20, 60))
    threads, fds = settled()
    gc.collect()
    growth = (process.memory_info().rss - warm_rss) / 2**20
    assert threads <= baseline[0], f"{threads} threads left, {baseline[0]} before"
    assert fds <= baseline[1], f"{fds} open files, {baseline[1]} before"
    assert growth < 50, f"resident memory grew {growth:.1f} MiB after warm-up"
    assert engine.generate(PROMPT, delta_mid=2.0).token_ids == reference.token_ids  # still the same engine


# ------------------------------------------------------------------ bad messages name themselves


@pytest.mark.parametrize("role", ["users", "human", "ai", "developer", "", None])
def test_an_unknown_message_role_is_refused_with_the_allowed_roles(engine, role):
    messages = [{"role": "system", "content": "Be brief."}, {"role": role, "content": "hi"}]
    with pytest.raises(GuideError) as info:
        engine.generate(messages)
    assert str(info.value) == f"message 1 has role {role!r}; allowed: system, user, assistant, tool"
    assert isinstance(info.value, ValueError)


def test_every_allowed_role_renders(engine):
    from guide_engine.alignment import ROLES

    messages = [{"role": role, "content": f"<!-> {role} <-!>"} for role in ROLES] + [{"role": "user", "content": "ok"}]
    spans = engine.encode(messages).spans
    assert [(s.message_index, s.text) for s in spans] == [(i, f" {role} ") for i, role in enumerate(ROLES)]


def test_a_tag_error_in_a_message_names_the_message_and_its_role(engine):
    messages = [{"role": "system", "content": "<!-> Be brief. <-!>"}, {"role": "user", "content": "Read: a <-!> b"}]
    with pytest.raises(TagError) as info:
        engine.generate(messages)
    assert str(info.value) == (
        "message 1 (user): closing tag '<-!>' at position 8 has no opening tag '<!->': 'Read: a <-!> b'"
    )
    assert (info.value.tag, info.value.position) == ("<-!>", 8)  # the position counts within the message
    with pytest.raises(TagError) as plain:  # a string prompt is no message: the parser's own words
        engine.generate("Read: a <-!> b")
    assert str(plain.value) == "closing tag '<-!>' at position 8 has no opening tag '<!->': 'Read: a <-!> b'"


def _example(name: str):
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"example_{name}", ROOT / "examples" / f"{name}.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_demo_shows_progress_and_gets_the_same_answer(engine, capsys):
    demo = _example("demo")
    result = demo.generate(engine, PROMPT, "GUIDE, Δ = 1", max_new_tokens=5, delta_mid=1.0)
    assert result.token_ids == engine.generate(PROMPT, max_new_tokens=5, delta_mid=1.0).token_ids
    out, err = capsys.readouterr()
    assert re.fullmatch(rf"  GUIDE, Δ = 1: {result.completion_tokens} tokens in \d+\.\d s\n", out), out
    assert "GUIDE, Δ = 1" in err and "reading the prompt" in err  # the bar, on stderr, while it runs
