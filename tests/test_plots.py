"""Tests of the influence pictures (guide_engine.plots): the PNG figure and the HTML heatmap."""

from __future__ import annotations

import html
import json
import math
import os
import re
import shutil
import struct
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
import torch

from guide_engine import AppliedSpan, GuideError, InfluenceResult, shared_engine
from guide_engine.plots import LOG_FLOOR, display_token, influence_figure, influence_html, plot_influence

NASTY = "Ġ</script><b>"
TOKENS = [
    "<|im_start|>",
    "user",
    "Ċ",
    "Tell",
    "Ġme",
    "Ġabout",
    "Ġcats",
    NASTY,
    "Ġ&",
    "Ġ\"q'",
    "<|im_end|>",
    "Ċ",
    "<|im_start|>",
    "ass",
    "istant",
    "Ċ",
    "Cats",
    "Ġpurr",
    "Ã©",
    ".",
]
GEN_START = 16
SPAN = AppliedSpan("influence", 0, 0.0, "cats </script><b>", 0, 6, 8)
EMPHASIS = AppliedSpan("emphasis", 2, 1.5, "Tell me", 0, 3, 5)


def _layer(seed: int) -> list[float]:
    """Zero before the span (as causality makes it), known positive numbers from it on."""
    rng = np.random.default_rng(seed)
    values = [0.0] * SPAN.token_start + list(rng.uniform(1e-4, 1.0, len(TOKENS) - SPAN.token_start))
    values[12] = 3e-10  # below the floor: drawn at the floor
    return values


def make_result(num_layers: int = 5) -> InfluenceResult:
    layers = {-1: torch.tensor([1.0 if SPAN.token_start <= i < SPAN.token_end else 0.0 for i in range(len(TOKENS))])}
    layers.update({k: torch.tensor(_layer(k), dtype=torch.float32) for k in range(num_layers)})
    return InfluenceResult(
        layers=layers,
        tokens=list(TOKENS),
        spans=(EMPHASIS, SPAN),
        generation_start=GEN_START,
        metric="influence",
        delta_influence=0.25,
        token_ids=list(range(len(TOKENS))),
    )


def reference_rolling_log_mean(values: list[float], window: int) -> list[float]:
    """Trailing mean of log10 over the last `window` positions, skipping values under the floor."""
    out = []
    for i in range(len(values)):
        kept = [math.log10(v) for v in values[max(0, i - window + 1) : i + 1] if v >= LOG_FLOOR]
        out.append(sum(kept) / len(kept) if kept else float("nan"))
    return out


# ----------------------------------------------------------------------------------------- PNG


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG signature"
    assert data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def test_plot_writes_a_valid_png(tmp_path: Path) -> None:
    target = tmp_path / "influence.png"
    assert plot_influence(make_result(), target) == str(target)
    width, height = png_size(target)
    assert 800 <= width <= 2400 and 400 <= height <= 1400 and width > height
    import matplotlib.image

    pixels = matplotlib.image.imread(target)
    assert pixels.shape[:2] == (height, width)
    assert pixels[..., :3].std() > 0.05  # something was drawn


def test_result_plot_method_uses_the_same_figure(tmp_path: Path) -> None:
    target = tmp_path / "via_method.png"
    assert make_result().plot(str(target), layers=[1]) == str(target)
    assert png_size(target)[0] > 0


def _lines(fig) -> dict[str, object]:
    return {line.get_label(): line for line in fig.axes[0].get_lines()}


def test_figure_lines_are_log10_of_the_values_with_a_rolling_mean() -> None:
    result = make_result()
    fig = influence_figure(result, layers=[0, 3], window=3)
    lines = _lines(fig)
    for layer in (0, 3):
        values = result[layer].tolist()
        raw = lines[f"layer {layer}, per token"]
        np.testing.assert_array_equal(raw.get_xdata(), np.arange(len(TOKENS)))
        np.testing.assert_allclose(raw.get_ydata(), [math.log10(max(v, LOG_FLOOR)) for v in values], rtol=1e-12)
        mean = lines[f"layer {layer}, mean of 3 tokens"]
        np.testing.assert_allclose(mean.get_ydata(), reference_rolling_log_mean(values, 3), rtol=1e-12, equal_nan=True)
    # Zeros and values under the floor sit at log10(floor) = -8 on the raw line.
    assert lines["layer 0, per token"].get_ydata()[0] == -8.0
    assert lines["layer 0, per token"].get_ydata()[12] == -8.0
    assert set(lines) == {
        "layer 0, per token",
        "layer 0, mean of 3 tokens",
        "layer 3, per token",
        "layer 3, mean of 3 tokens",
        "generation starts",
    }
    assert list(lines["generation starts"].get_xdata()) == [GEN_START - 0.5, GEN_START - 0.5]


def test_figure_shades_the_span_and_labels_the_axes() -> None:
    fig = influence_figure(make_result(), layers=[2])
    ax = fig.axes[0]
    shaded = [p for p in ax.patches if p.get_label() == "influence span"]
    assert len(shaded) == 1
    left, width = shaded[0].get_x(), shaded[0].get_width()  # a Rectangle in data x-coordinates
    assert (left, left + width) == (SPAN.token_start - 0.5, SPAN.token_end - 0.5)
    assert ax.get_xlabel() == "token position (prompt and generated text)"
    assert ax.get_ylabel() == "log10 influence (values < 1e-08 drawn at -8)"
    assert ax.get_title() == "Influence of “cats </script><b>” (Δ influence = 0.25; emphasis Δ = 1.5)"
    legend_labels = [t.get_text() for t in fig.legends[0].get_texts()]
    assert legend_labels == ["layer 2, per token", "layer 2, mean of 5 tokens", "influence span", "generation starts"]
    # The PNG has no color bar: its scale is the value axis, numbered in log10 down to the floor.
    fig.draw_without_rendering()
    numbers = [float(t.get_text().replace("\N{MINUS SIGN}", "-")) for t in ax.get_yticklabels() if t.get_text()]
    assert len(numbers) >= 3 and min(numbers) <= -8 and max(numbers) >= -1


def test_default_layers_are_first_middle_and_last() -> None:
    labels = set(_lines(influence_figure(make_result(num_layers=5))))
    assert {label for label in labels if label.endswith("per token")} == {
        "layer 0, per token",
        "layer 2, per token",
        "layer 4, per token",
    }
    rollout = make_result(num_layers=2)
    rollout.metric = "attention_rollout"
    fig = influence_figure(rollout)
    assert {label for label in _lines(fig) if label.endswith("per token")} == {
        "layer 0, per token",
        "layer 1, per token",
    }
    assert fig.axes[0].get_ylabel().startswith("log10 attention rollout")


def test_bad_layers_and_window_are_named() -> None:
    result = make_result(num_layers=5)
    with pytest.raises(GuideError) as error:
        influence_figure(result, layers=[0, 7])
    assert str(error.value) == (
        "layer 7 is not in this result; available layers are -1..4 (-1 is the span indicator before the first layer)"
    )
    with pytest.raises(GuideError, match=r"layer 'x' is not in this result"):
        result.plot("unused.png", layers=["x"])
    with pytest.raises(GuideError, match=r"layers must be a non-empty list of layer indices, got \[\]"):
        influence_figure(result, layers=[])
    with pytest.raises(GuideError, match=r"window must be a positive integer number of tokens, got 0"):
        influence_figure(result, window=0)


def test_unwritable_path_is_a_guide_error(tmp_path: Path) -> None:
    missing = tmp_path / "no" / "such" / "dir"
    with pytest.raises(GuideError, match=r"cannot write the plot to .*no/such/dir/x\.png"):
        plot_influence(make_result(), missing / "x.png")
    with pytest.raises(GuideError, match=r"cannot write the HTML page to .*no/such/dir/x\.html"):
        influence_html(make_result(), missing / "x.html")


# ---------------------------------------------------------------------------------------- HTML


class PageParser(HTMLParser):
    """Collects what a browser would build: token boxes, scripts, controls."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tokens: list[dict] = []
        self.scripts: list[tuple[dict, str]] = []
        self.inputs: list[dict] = []
        self.options: list[str] = []
        self.markers: list[int] = []  # number of token boxes seen before each generation marker
        self._in_token: dict | None = None
        self._depth = 0  # spans open inside the current token box (its newline marks)
        self._script: dict | None = None
        self.external: list[str] = []

    def handle_starttag(self, tag: str, attrs: list) -> None:
        a = dict(attrs)
        for key in ("src", "href"):
            if key in a:
                self.external.append(a[key])
        classes = (a.get("class") or "").split()
        if tag == "span" and self._in_token is not None:
            self._depth += 1
            self._in_token["marks"].append((classes, len(self._in_token["text"])))
        elif tag == "span" and "tok" in classes:
            self._in_token = {"i": int(a["data-i"]), "classes": classes, "text": "", "marks": []}
        elif tag == "span" and "gen-marker" in classes:
            self.markers.append(len(self.tokens))
        elif tag == "script":
            self._script = a
            self.scripts.append((a, ""))
        elif tag == "input":
            self.inputs.append(a)
        elif tag == "option":
            self.options.append(a["value"])

    def handle_endtag(self, tag: str) -> None:
        if tag == "span" and self._depth:
            self._depth -= 1
        elif tag == "span" and self._in_token is not None:
            self.tokens.append(self._in_token)
            self._in_token = None
        elif tag == "script":
            self._script = None

    def handle_data(self, data: str) -> None:
        if self._in_token is not None:
            self._in_token["text"] += data
        if self._script is not None:
            attrs, text = self.scripts[-1]
            self.scripts[-1] = (attrs, text + data)


def parse_page(path: Path) -> tuple[str, PageParser]:
    page = path.read_text(encoding="utf-8")
    parser = PageParser()
    parser.feed(page)
    parser.close()
    return page, parser


def embedded_data(parser: PageParser) -> dict:
    blocks = [text for attrs, text in parser.scripts if attrs.get("type") == "application/json"]
    assert len(blocks) == 1
    return json.loads(blocks[0])


def test_html_embeds_every_layer_exactly(tmp_path: Path) -> None:
    result = make_result()
    target = tmp_path / "influence.html"
    assert influence_html(result, target) == str(target)
    _, parser = parse_page(target)
    data = embedded_data(parser)
    assert data["layer_order"] == [-1, 0, 1, 2, 3, 4]
    assert {int(k): v for k, v in data["layers"].items()} == {k: result[k].tolist() for k in result}
    assert data["tokens"] == TOKENS
    assert data["generation_start"] == GEN_START
    assert data["spans"] == [EMPHASIS.to_dict(), SPAN.to_dict()]


@pytest.mark.parametrize(
    "text,whole_characters",
    [("Héllo wörld, été.\n\tTabs  and spaces", True), ("日本語 🙂🚀 한국어 ça e\u0301 Ελληνικά ĠĊ", False)],
)
def test_byte_level_tokens_read_as_the_tokenizer_decodes_them(
    smol_tokenizer, text: str, whole_characters: bool
) -> None:
    """On a byte-level BPE tokenizer (SmolLM2's), a token reads as the tokenizer itself decodes it;
    a token that holds part of a character keeps its raw form instead of U+FFFD."""
    tokens = smol_tokenizer.convert_ids_to_tokens(smol_tokenizer(text, add_special_tokens=False)["input_ids"])
    partial = 0
    for token in tokens:
        decoded = smol_tokenizer.convert_tokens_to_string([token])
        if "\ufffd" in decoded:
            partial += 1
            assert display_token(token) == token.replace("Ġ", " ").replace("Ċ", "\n")
        else:
            assert display_token(token) == decoded, token
    assert any(display_token(t) not in (t, t.replace("Ġ", " ")) for t in tokens)  # bytes were decoded
    if whole_characters:  # no token splits a character: the tokens put together read as the text
        assert partial == 0 and "".join(display_token(t) for t in tokens) == text
    else:
        assert partial > 0  # CJK, emoji and some accents are split into byte tokens


def test_html_shows_every_token_readably_and_escaped(tmp_path: Path) -> None:
    target = make_result().to_html(str(tmp_path / "tokens.html"))
    page, parser = parse_page(Path(target))
    # A browser sees one box per token, in order, holding the token's exact readable text.
    assert [t["i"] for t in parser.tokens] == list(range(len(TOKENS)))
    assert [t["text"] for t in parser.tokens] == [display_token(t) for t in TOKENS]
    assert parser.tokens[4]["text"] == " me" and parser.tokens[2]["text"] == "\n" and parser.tokens[18]["text"] == "é"
    # Each newline gets an empty mark right before it (CSS draws '↵' there, outside the text).
    for token in parser.tokens:
        assert token["marks"] == [(["nl"], i) for i, c in enumerate(token["text"]) if c == "\n"]
    assert sum(len(t["marks"]) for t in parser.tokens) == 3
    for token in TOKENS:
        assert html.escape(display_token(token)) in page
    # The hostile token cannot open or close elements: it is text in its box and a string in the JSON.
    assert parser.tokens[7]["text"] == " </script><b>"
    assert " &lt;/script&gt;&lt;b&gt;" in page
    assert "<b>" not in page
    assert page.count("</script>") == 2 and len(parser.scripts) == 2
    (block,) = [text for attrs, text in parser.scripts if attrs.get("type") == "application/json"]
    assert "<" not in block and ">" not in block  # no '</script', '<!--' or '<script' can form inside it
    assert embedded_data(parser)["tokens"][7] == NASTY


def test_html_outlines_spans_marks_generation_and_has_layer_controls(tmp_path: Path) -> None:
    page, parser = parse_page(Path(make_result(num_layers=5).to_html(tmp_path / "controls.html")))
    influence = [t["i"] for t in parser.tokens if "in-influence" in t["classes"]]
    emphasis = [t["i"] for t in parser.tokens if "in-emphasis" in t["classes"]]
    assert influence == list(range(SPAN.token_start, SPAN.token_end))
    assert emphasis == list(range(EMPHASIS.token_start, EMPHASIS.token_end))
    assert parser.markers == [GEN_START]  # right before the first generated token
    (slider,) = [a for a in parser.inputs if a.get("type") == "range"]
    assert (slider["min"], slider["max"], slider["step"], slider["value"]) == ("-1", "4", "1", "4")
    assert parser.options == ["-1", "0", "1", "2", "3", "4"]
    assert any(a.get("type") == "checkbox" and a.get("id") == "log-scale" for a in parser.inputs)
    assert 'id="tooltip"' in page
    # Self-contained: nothing to fetch.
    assert parser.external == [] and "http://" not in page and "https://" not in page


def test_html_turns_non_finite_values_into_null(tmp_path: Path) -> None:
    result = make_result(num_layers=1)
    result.layers[0] = torch.tensor([float("nan")] + result[0].tolist()[1:])
    _, parser = parse_page(Path(influence_html(result, tmp_path / "nan.html")))
    assert embedded_data(parser)["layers"]["0"][:2] == [None, 0.0]


def chromium() -> str:
    """Debian's ``chromium``: skip without it, but fail in CI (``CI=true``), where ``.ci/run`` installs it."""
    path = shutil.which("chromium")
    if path is None:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(
                "CI=true but Debian's chromium is not installed; .ci/run installs it (apt-get install chromium)"
            )
        pytest.skip("Debian chromium is not installed (apt-get install chromium)")
    return path


def test_html_layer_slider_recolors_in_a_real_browser(tmp_path: Path) -> None:
    """Drive the page's slider and select in headless chromium and read back the DOM."""
    browser = chromium()
    result = make_result(num_layers=5)
    page = Path(influence_html(result, tmp_path / "slider.html")).read_text(encoding="utf-8")
    probe = """<script>
var r = document.getElementById("layer-range"), s = document.getElementById("layer-select");
r.value = "0"; r.dispatchEvent(new Event("input"));
document.body.setAttribute("data-slider", window.guideInfluence.layer() + "|" + s.value);
s.value = "-1"; s.dispatchEvent(new Event("change"));
document.body.setAttribute("data-select", window.guideInfluence.layer() + "|" + r.value + "|" +
  document.querySelector('.tok[data-i="6"]').style.backgroundColor + "|" +
  document.querySelector('.tok[data-i="9"]').style.backgroundColor);
</script></body>"""
    (tmp_path / "probe.html").write_text(page.replace("</body>", probe), encoding="utf-8")
    dom = subprocess.run(
        [browser, "--headless", "--no-sandbox", "--disable-gpu", "--dump-dom", (tmp_path / "probe.html").as_uri()],
        capture_output=True,
        text=True,
        timeout=90,
        check=True,
    ).stdout
    assert 'data-slider="0|0"' in dom
    # Layer -1 is the indicator: the span is colored at full heat, the rest is left white.
    assert 'data-select="-1|-1|rgb(128, 0, 38)|"' in dom


class ProbeParser(HTMLParser):
    """Reads the ``data-probe`` attribute that a probe script leaves on <body>."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.probe: str | None = None

    def handle_starttag(self, tag: str, attrs: list) -> None:
        if tag == "body":
            self.probe = dict(attrs).get("data-probe")


def in_browser(page: str, probe: str, folder: Path, width: int = 800) -> dict:
    """Open ``page`` in headless chromium ``width`` px wide; return what the JS expression ``probe`` gives.

    The probe runs after the page's own script, and its value comes back as JSON through the DOM.
    """
    browser = chromium()
    script = f'<script>document.body.setAttribute("data-probe", JSON.stringify({probe}));</script></body>'
    target = folder / "probe.html"
    target.write_text(page.replace("</body>", script), encoding="utf-8")
    dom = subprocess.run(
        [browser, "--headless", "--no-sandbox", "--disable-gpu", f"--window-size={width},700", "--dump-dom"]
        + [target.as_uri()],
        capture_output=True,
        text=True,
        timeout=90,
        check=True,
    ).stdout
    parser = ProbeParser()
    parser.feed(dom)
    assert parser.probe is not None, dom[-2000:]
    return json.loads(parser.probe)


def long_result() -> InfluenceResult:
    """A RAG-sized prompt and answer: hundreds of words, a 300-character word, a run of newlines."""
    document = (
        "Mount Everest lies in the Mahalangur Himal subrange of the Himalayas. Tenzing Norgay and Edmund "
        "Hillary reached its summit on 29 May 1953. "
    ) * 12
    words = ["<|im_start|>", "user", "Ċ", *("Ġ" + w for w in document.split())]
    words += ["Ġhttps://example.org/" + "a" * 300, "ĊĊ", "Ġtab\tstop", "Ġcarriage\rreturn", "<|im_end|>", "Ċ"]
    start = len(words)
    answer = "The first ascent of Mount Everest, in the Mahalangur Himal, was on 29 May 1953. " * 8
    words += [("Ġ" if i else "") + w for i, w in enumerate(answer.split())]
    rng = np.random.default_rng(7)
    layers = {k: torch.tensor(rng.uniform(1e-6, 1.0, len(words)), dtype=torch.float32) for k in range(3)}
    span = AppliedSpan("influence", 0, 0.0, "Mount Everest", 0, 3, 5)
    return InfluenceResult(layers, words, (span,), start, "influence", 0.0, list(range(len(words))))


def test_html_wraps_long_text_in_an_800px_window(tmp_path: Path) -> None:
    """No horizontal overflow at 800 px, every token box inside the window, and the text unchanged."""
    result = long_result()
    page = Path(influence_html(result, tmp_path / "long.html")).read_text(encoding="utf-8")
    probe = """(function () {
  var root = document.documentElement, toks = Array.prototype.slice.call(document.querySelectorAll(".tok"));
  var box = document.getElementById("tokens"), text = "", marker = null;
  box.childNodes.forEach(function (n) {
    if (n.classList.contains("gen-marker")) { marker = text.length; } else { text += n.textContent; }
  });
  var right = Math.max.apply(null, Array.prototype.slice.call(document.querySelectorAll("body *")).map(
    function (el) { return el.getBoundingClientRect().right; }));
  var long = toks.filter(function (el) { return el.textContent.indexOf("https://") >= 0; })[0];
  var lineHeight = parseFloat(getComputedStyle(box).lineHeight);
  return { innerWidth: window.innerWidth, clientWidth: root.clientWidth, scrollWidth: root.scrollWidth,
    bodyScrollWidth: document.body.scrollWidth, right: right, text: text, marker: marker,
    tokens: toks.map(function (el) { return el.textContent; }),
    longLines: long.getClientRects().length, lines: box.getBoundingClientRect().height / lineHeight };
})()"""
    seen = in_browser(page, probe, tmp_path, width=800)
    assert seen["innerWidth"] == 800
    assert seen["scrollWidth"] <= seen["clientWidth"], seen
    assert seen["bodyScrollWidth"] <= seen["clientWidth"]
    assert seen["right"] <= seen["clientWidth"]  # no element, token box or control, sticks out
    # The text is the tokens' text, whitespace included: the page only adds line breaks where it wraps.
    shown = [display_token(t) for t in result.tokens]
    assert seen["tokens"] == shown
    assert seen["text"] == "".join(shown)
    assert seen["marker"] == len("".join(shown[: result.generation_start]))  # before the first generated token
    for whitespace in ("\t", "\r", "\n\n"):
        assert whitespace in seen["text"]
    # It did wrap: the 300-character word is broken over several lines, the whole over many.
    assert seen["longLines"] >= 3
    assert seen["lines"] > 40


@pytest.mark.parametrize("width", [800, 520, 360])
def test_html_legend_outlines_clear_the_lines_around_them(tmp_path: Path, width: int) -> None:
    """The key's "solid outline" and "dashed outline" samples, outline included, touch no other line's text."""
    page = Path(influence_html(make_result(), tmp_path / "key.html")).read_text(encoding="utf-8")
    probe = """(function () {
  var key = document.querySelector(".key"), samples = key.querySelectorAll(".sample"), text = [];
  var walker = document.createTreeWalker(key, NodeFilter.SHOW_TEXT);
  while (walker.nextNode()) {
    var node = walker.currentNode;
    if (node.parentElement.closest(".sample")) { continue; }
    var range = document.createRange();
    range.selectNodeContents(node);
    Array.prototype.forEach.call(range.getClientRects(), function (r) {
      if (r.width > 0) { text.push({top: r.top, bottom: r.bottom, left: r.left, right: r.right}); }
    });
  }
  return Array.prototype.map.call(samples, function (el) {
    var r = el.getBoundingClientRect(), style = getComputedStyle(el);
    var out = parseFloat(style.outlineWidth) + parseFloat(style.outlineOffset);
    return {label: el.textContent, outline: out, top: r.top - out, bottom: r.bottom + out, left: r.left - out,
      right: r.right + out, text: text};
  });
})()"""
    seen = in_browser(page, probe, tmp_path, width=width)
    assert [sample["label"] for sample in seen] == ["solid outline", "dashed outline"]
    for sample in seen:
        assert sample["outline"] >= 2  # the style drew one, so the check below means something
        overlaps = [
            t
            for t in sample["text"]
            if min(sample["bottom"], t["bottom"]) - max(sample["top"], t["top"]) > 0.5
            and min(sample["right"], t["right"]) - max(sample["left"], t["left"]) > 0.5
        ]
        assert overlaps == [], (sample["label"], sample["top"], sample["bottom"], overlaps)


def ramp_reference(t: float) -> tuple[int, ...]:
    """The page's color ramp (YlOrRd-like, linear in RGB between five stops), as JS rounds it."""
    stops = [(255, 255, 255), (255, 237, 160), (254, 178, 76), (240, 59, 32), (128, 0, 38)]
    t = min(1.0, max(0.0, t)) * (len(stops) - 1)
    k = min(math.floor(t), len(stops) - 2)
    f = t - k
    return tuple(math.floor(a + (b - a) * f + 0.5) for a, b in zip(stops[k], stops[k + 1]))


def rgb(color: tuple[int, ...]) -> str:
    return f"rgb({color[0]}, {color[1]}, {color[2]})"


LOW = 0.08  # the bar's left end: the smallest nonzero value is ramp(LOW), not white


def test_html_color_bar_has_values_on_the_scale_of_the_colors(tmp_path: Path) -> None:
    """The bar's ticks are numbers placed where the boxes of those values get their color."""
    result = make_result(num_layers=5)
    page = Path(influence_html(result, tmp_path / "bar.html")).read_text(encoding="utf-8")
    read = """function () {
  var ticks = Array.prototype.slice.call(document.querySelectorAll("#colorbar-ticks .tick"));
  return { label: document.getElementById("colorbar-label").textContent,
    ramp: document.getElementById("colorbar-ramp").style.backgroundImage,
    bar: document.getElementById("colorbar").getBoundingClientRect().width,
    ticks: ticks.map(function (el) {
      return [el.textContent, parseFloat(el.getAttribute("data-value")), parseFloat(el.style.left)]; }),
    colors: Array.prototype.slice.call(document.querySelectorAll(".tok")).map(function (el) {
      return el.style.backgroundColor; }) };
}"""
    probe = f"""(function () {{ var read = {read}; window.guideInfluence.setLayer(0); var log = read();
  window.guideInfluence.useLog(false); return {{ log: log, linear: read() }}; }})()"""
    seen = in_browser(page, probe, tmp_path)
    values = result[0].double().tolist()
    positive = [v for v in values if v > 0]
    low, high = math.log10(max(min(positive), LOG_FLOOR)), math.log10(max(positive))

    def log_at(v: float) -> float:
        return (math.log10(max(v, LOG_FLOOR)) - low) / (high - low)

    def linear_at(v: float) -> float:
        return v / max(positive)

    for name, at in (("log", log_at), ("linear", linear_at)):
        bar = seen[name]
        assert bar["label"] == f"influence ({name} scale)"
        # Every colored box has the color of its value's place on the bar; zeros stay white.
        expected = [rgb(ramp_reference(LOW + (1 - LOW) * at(v))) if v > 0 else "" for v in values]
        assert bar["colors"] == expected
        # The bar's gradient is the same ramp: from the faintest box color to the strongest.
        stops = re.findall(r"rgb\(\d+, \d+, \d+\)", bar["ramp"])
        assert stops[0] == rgb(ramp_reference(LOW))
        assert stops[-1] == rgb(ramp_reference(1.0)) == "rgb(128, 0, 38)"
        # Ticks: numbers, in order, each at its value's place, both ends labelled.
        ticks = bar["ticks"]
        assert len(ticks) >= 4
        for label, value, left in ticks:
            assert float(label.lstrip("≤")) == pytest.approx(value, rel=0.05), label
            assert left == pytest.approx(100 * at(value), abs=1e-3), label
        assert [t[2] for t in ticks] == sorted(t[2] for t in ticks)
        assert ticks[0][2] == 0
        assert ticks[-1][2] == 100
        assert ticks[-1][1] == pytest.approx(max(positive))
    # Log: the layer has a value under the floor, so the low end is the floor, and ticks are powers of ten.
    assert [t[0] for t in seen["log"]["ticks"]] == ["≤1e-8", "1e-6", "1e-4", "0.01", f"{max(positive):.2g}"]
    assert seen["linear"]["ticks"][0][0] == "0"
    steps = [k / 5 for k in range(1, 5) if 0.15 < k / 5 / max(positive) < 0.85]  # round steps, clear of the ends
    assert len(steps) >= 3
    assert [t[1] for t in seen["linear"]["ticks"][1:-1]] == pytest.approx(steps)


# ---------------------------------------------------------------------------------- real model


@pytest.mark.real_model
def test_real_model_influence_plot_and_html(tmp_path: Path) -> None:
    engine = shared_engine()
    generated = engine.generate("Describe <?->a red apple<-?> in a few words.", max_new_tokens=8, metric="influence")
    result = generated.influence
    assert len(result.tokens) == generated.prompt_tokens + generated.completion_tokens
    png = tmp_path / "real.png"
    assert result.plot(str(png)) == str(png)
    assert png_size(png)[0] > 0
    lines = _lines(influence_figure(result))
    last = engine.num_layers - 1
    assert {f"layer {k}, per token" for k in (0, engine.num_layers // 2, last)} <= set(lines)
    np.testing.assert_allclose(
        lines[f"layer {last}, per token"].get_ydata(), np.log10(np.clip(result[last].double().numpy(), LOG_FLOOR, None))
    )
    page = tmp_path / "real.html"
    assert result.to_html(str(page)) == str(page)
    _, parser = parse_page(page)
    data = embedded_data(parser)
    assert len(data["layers"]) == engine.num_layers + 1
    assert {int(k): v for k, v in data["layers"].items()} == {k: result[k].tolist() for k in result}
    assert len(parser.tokens) == len(result.tokens)
    assert parser.markers == [generated.prompt_tokens]
