"""Pictures of an :class:`~guide_engine.influence.InfluenceResult`: a PNG figure and an HTML heatmap.

``plot_influence`` draws the figure of "Pay Attention to What Matters": log10 influence against
token position for a few layers, each with a rolling mean over the raw values, the measured span
shaded and the start of generation marked. ``influence_html`` writes one self-contained page (no
network: inline CSS and JS) that colors every token by its value in a chosen layer.

matplotlib is used through its object API with the Agg canvas only: no pyplot, no GUI backend,
no global figure state, so plotting is safe from worker threads and servers.
"""

from __future__ import annotations

import html
import json
import math
import os
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
from tokenizers import decoders, pre_tokenizers

from .errors import GuideError, GuideValueError, MissingDependencyError

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["LOG_FLOOR", "InfluenceData", "display_token", "influence_figure", "influence_html", "plot_influence"]


class InfluenceData(Protocol):
    """What a picture needs of a measurement; :class:`~guide_engine.influence.InfluenceResult` has it.

    A protocol rather than an import keeps this module free of the engine: the influence module
    imports the plots (lazily, for matplotlib's cost), never the other way round.
    """

    @property
    def layers(self) -> Mapping[int, Any]: ...
    @property
    def tokens(self) -> Sequence[str]: ...
    @property
    def spans(self) -> Sequence[Any]: ...
    @property
    def generation_start(self) -> int: ...
    @property
    def metric(self) -> str: ...
    @property
    def delta_influence(self) -> float: ...


LOG_FLOOR = 1e-8
"""Values below this (zeros included) are drawn at log10(LOG_FLOOR) = -8."""

METRIC_LABELS = {"influence": "Influence", "attention_rollout": "Attention rollout"}


# ------------------------------------------------------------------------------------ helpers


def layer_values(result: InfluenceData, layer: int) -> np.ndarray:
    """One layer's values as a float64 array over positions."""
    values = result.layers[layer]
    if hasattr(values, "detach"):
        values = values.detach().cpu().double().numpy()
    return np.asarray(values, dtype=np.float64).reshape(-1)


_BYTE_LEVEL = decoders.ByteLevel()  # the decoder of GPT-2-style byte-level BPE tokenizers
_BYTE_LEVEL_ALPHABET = frozenset(pre_tokenizers.ByteLevel.alphabet())  # the 256 characters that stand for bytes


def display_token(token: str) -> str:
    """Readable text of a token, whatever the tokenizer.

    A result holds token strings only (it may come back from JSON), so the token is read on its
    own: when every character is in byte-level BPE's alphabet and the bytes they stand for are
    valid UTF-8, ``tokenizers``' own byte-level decoder gives its text ('Ġme' → ' me', 'Ã©' → 'é').
    Other tokens (SentencePiece, or part of a character) get 'Ġ' → space, '▁' → space and
    'Ċ' → newline. (Not the tokenizer's ``convert_tokens_to_string``: a SentencePiece decoder
    strips the leading space of a lone token, and the tokens put together must read as the text.)
    """
    if token and _BYTE_LEVEL_ALPHABET.issuperset(token):
        text = str(_BYTE_LEVEL.decode([token]))
        if "\ufffd" not in text:  # (part of a character decodes to U+FFFD)
            return text
    return token.replace("Ġ", " ").replace("▁", " ").replace("Ċ", "\n")


def rolling_mean(values: np.ndarray, window: int) -> np.ndarray:
    """Trailing mean over the last ``window`` values, skipping NaN (pandas' ``rolling(window, min_periods=1)``).

    A position whose window holds only NaN gets NaN (a gap in the line).
    """
    missing = np.isnan(values)
    sums = np.cumsum(np.concatenate([[0.0], np.where(missing, 0.0, values)]))
    counts = np.cumsum(np.concatenate([[0], ~missing]))
    ends = np.arange(1, len(values) + 1)
    starts = np.maximum(ends - window, 0)
    n = counts[ends] - counts[starts]
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n > 0, (sums[ends] - sums[starts]) / np.maximum(n, 1), np.nan)


def _available(result: InfluenceData) -> list[int]:
    return sorted(int(k) for k in result.layers)


def _range_text(available: list[int]) -> str:
    contiguous = available == list(range(available[0], available[-1] + 1))
    return f"{available[0]}..{available[-1]}" if contiguous else ", ".join(map(str, available))


def choose_layers(result: InfluenceData, layers: Sequence[int] | None) -> list[int]:
    """The layers to draw: the given ones (validated), or the first, middle and last layer."""
    available = _available(result)
    if not available:
        raise GuideValueError("this influence result has no layers to plot")
    if layers is None:
        decoder = [k for k in available if k >= 0] or available
        picks = [decoder[0], decoder[len(decoder) // 2], decoder[-1]]
        return list(dict.fromkeys(picks))
    if isinstance(layers, (str, bytes)) or not isinstance(layers, Sequence) or len(layers) == 0:
        raise GuideValueError(f"layers must be a non-empty list of layer indices, got {layers!r}")
    chosen = []
    for layer in layers:
        if isinstance(layer, bool) or not isinstance(layer, (int, np.integer)) or int(layer) not in result.layers:
            raise GuideValueError(
                f"layer {layer!r} is not in this result; available layers are {_range_text(available)} "
                "(-1 is the span indicator before the first layer)"
            )
        chosen.append(int(layer))
    return list(dict.fromkeys(chosen))


def _influence_spans(result: InfluenceData) -> list[Any]:
    return [s for s in result.spans if s.kind == "influence" and s.token_end > s.token_start]


def _short(text: str, limit: int = 40) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _format_number(value: float) -> str:
    return f"{value:g}"


def describe(result: InfluenceData) -> str:
    """One-line title: the metric, the measured text and the Δ in effect."""
    metric = METRIC_LABELS.get(result.metric, result.metric)
    measured = _influence_spans(result) or [s for s in result.spans if s.kind == "influence"]
    what = " + ".join(f"“{_short(s.text)}”" for s in measured) or "the span"
    deltas = [f"Δ influence = {_format_number(result.delta_influence)}"]
    emphasis = sorted({s.delta for s in result.spans if s.kind == "emphasis"})
    if emphasis:
        deltas.append("emphasis Δ = " + ", ".join(_format_number(d) for d in emphasis))
    return f"{metric} of {what} ({'; '.join(deltas)})"


# ---------------------------------------------------------------------------------------- PNG


def influence_figure(result: InfluenceData, layers: Sequence[int] | None = None, window: int = 5) -> Figure:
    """Build the figure of :func:`plot_influence` without saving it.

    For each chosen layer the axes hold two lines, in this order: the per-token log10 values
    (thin) and their rolling mean (thick, same color).

    Args:
        result: the influence (or rollout) to draw.
        layers: layer indices (−1 … L−1) present in ``result``; default first, middle and last layer.
        window: tokens in the trailing rolling mean; a positive integer.
    """
    try:
        from matplotlib.figure import Figure
    except ImportError as error:
        raise MissingDependencyError("plots need matplotlib: pip install 'guide-attention[plots]'") from error

    if isinstance(window, bool) or not isinstance(window, (int, np.integer)) or window < 1:
        raise GuideValueError(f"window must be a positive integer number of tokens, got {window!r}")
    chosen = choose_layers(result, layers)
    metric = METRIC_LABELS.get(result.metric, result.metric)

    fig = Figure(figsize=(11, 5.5), dpi=110, layout="constrained")
    ax = fig.add_subplot()
    palette = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf"]
    for n, layer in enumerate(chosen):
        values = layer_values(result, layer)
        logged = np.log10(np.clip(values, LOG_FLOOR, None))
        positions = np.arange(len(values))
        color = palette[n % len(palette)]
        ax.plot(positions, logged, color=color, linewidth=0.8, alpha=0.35, label=f"layer {layer}, per token")
        # Like the paper (whose log of 0 is -inf and is dropped), the mean skips the values at the floor.
        measured = np.where(values >= LOG_FLOOR, logged, np.nan)
        ax.plot(
            positions,
            rolling_mean(measured, int(window)),
            color=color,
            linewidth=2.0,
            label=f"layer {layer}, mean of {window} tokens",
        )

    for n, span in enumerate(_influence_spans(result)):
        ax.axvspan(
            span.token_start - 0.5,
            span.token_end - 0.5,
            color="#f2c14e",
            alpha=0.35,
            linewidth=0,
            label="influence span" if n == 0 else None,
        )
    ax.axvline(result.generation_start - 0.5, color="black", linestyle="--", linewidth=1.2, label="generation starts")
    ax.text(
        result.generation_start - 0.5,
        1.0,
        " generation starts",
        transform=ax.get_xaxis_transform(),
        ha="left",
        va="top",
        fontsize=9,
    )

    ax.set_xlabel("token position (prompt and generated text)")
    ax.set_ylabel(f"log10 {metric.lower()} (values < {LOG_FLOOR:g} drawn at {math.log10(LOG_FLOOR):g})")
    ax.set_title(describe(result))
    ax.set_xlim(-0.5, max(len(result.tokens), 1) - 0.5)
    ax.grid(True, alpha=0.25)
    fig.legend(loc="outside lower center", fontsize=8, ncols=min(4, 2 * len(chosen) + 2), frameon=False)
    return fig


def plot_influence(
    result: InfluenceData, path: str | os.PathLike[str], layers: Sequence[int] | None = None, window: int = 5
) -> str:
    """Save log10 influence against token position as a PNG (the paper's figure).

    Args:
        result: the influence (or rollout) to draw.
        path: where to write the PNG; its folder must exist.
        layers: layer indices (−1 … L−1) present in ``result``; default first, middle and last layer.
        window: tokens in the trailing rolling mean drawn over the raw values.

    Returns:
        ``path`` as a string.
    """
    fig = influence_figure(result, layers, window)
    target = os.fspath(path)
    try:
        fig.savefig(target, format="png")
    except OSError as error:
        raise GuideError(f"cannot write the plot to {target!r}: {error}") from error
    return target


# --------------------------------------------------------------------------------------- HTML


def _json_number(value: float) -> float | None:
    return float(value) if math.isfinite(value) else None


def html_payload(result: InfluenceData) -> dict[str, Any]:
    """The data embedded in the HTML page (JSON-serializable; non-finite values become null)."""
    layers = _available(result)
    return {
        "metric": result.metric,
        "metric_label": METRIC_LABELS.get(result.metric, result.metric),
        "delta_influence": result.delta_influence,
        "generation_start": int(result.generation_start),
        "tokens": list(result.tokens),
        "layer_order": layers,
        "layers": {str(k): [_json_number(v) for v in layer_values(result, k).tolist()] for k in layers},
        "spans": [s.to_dict() for s in result.spans],
    }


def _script_json(data: Any) -> str:
    """JSON that is safe inside a <script> element: '<', '>' and '&' become \\u escapes."""
    text = json.dumps(data, ensure_ascii=False, allow_nan=False)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def _token_classes(result: InfluenceData) -> list[list[str]]:
    classes: list[list[str]] = [[] for _ in result.tokens]
    for span in result.spans:
        name = "in-influence" if span.kind == "influence" else "in-emphasis"
        for t in range(max(span.token_start, 0), min(span.token_end, len(classes))):
            classes[t].append(name)
    return classes


def _token_text(shown: str) -> str:
    """A token's exact text as HTML: escaped, with an empty ``nl`` mark before each newline.

    The mark draws '↵' through CSS ``content``, which is not part of the page's text, so the text
    of the token boxes put together is the text of the tokens, newlines included. A carriage
    return is written as a character reference, which the HTML parser does not turn into '\\n'.
    """
    return html.escape(shown).replace("\r", "&#13;").replace("\n", '<span class="nl"></span>\n')


def _token_markup(result: InfluenceData) -> str:
    parts = []
    classes = _token_classes(result)
    for i, token in enumerate(result.tokens):
        if i == result.generation_start:
            parts.append('<span class="gen-marker" title="the model starts generating here">▶ generation starts</span>')
        css = " ".join(["tok", *classes[i], "generated" if i >= result.generation_start else "prompt"])
        parts.append(f'<span class="{css}" data-i="{i}">{_token_text(display_token(token))}</span>')
    if result.generation_start >= len(result.tokens):
        parts.append('<span class="gen-marker">▶ generation starts (nothing generated)</span>')
    return "".join(parts)


_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 1.5rem; color: #222; background: #fff;
  overflow-wrap: break-word; }
h1 { font-size: 1.25rem; margin: 0 0 .4rem; }
.meta { color: #555; font-size: .9rem; margin-bottom: .8rem; }
.controls { display: flex; flex-wrap: wrap; gap: 1rem; align-items: center; padding: .6rem .8rem;
  background: #f4f4f6; border-radius: 6px; position: sticky; top: 0; z-index: 2; }
.controls label { font-size: .9rem; }
#layer-range { width: 18rem; vertical-align: middle; }
.legend { display: flex; align-items: center; gap: .4rem; font-size: .8rem; }
#colorbar { position: relative; width: 16rem; height: 2.1rem; padding: 0 1.4rem; }
#colorbar-ramp { position: absolute; left: 1.4rem; right: 1.4rem; top: 0; height: .8rem; border: 1px solid #999;
  box-sizing: border-box; }
#colorbar-ticks { position: absolute; left: 1.4rem; right: 1.4rem; top: .8rem; bottom: 0; }
.tick { position: absolute; top: 0; transform: translateX(-50%); padding-top: .25rem; font-size: .7rem;
  white-space: nowrap; font-variant-numeric: tabular-nums; }
.tick::before { content: ""; position: absolute; left: 50%; top: 0; height: .2rem; border-left: 1px solid #444; }
/* The samples' outlines reach 3px beyond their box (2px + 1px offset): the key's lines are spaced so
   that they clear the text above and below, and the samples' margins clear the words beside them. */
.key { font-size: .8rem; color: #444; margin: .5rem 0 1rem; line-height: 2; }
.key span.sample { display: inline-block; padding: 0 .3rem; margin: 0 .3rem; line-height: 1.25; }
#tokens { font-family: ui-monospace, "SFMono-Regular", Menlo, Consolas, monospace; font-size: .95rem;
  line-height: 2.1; white-space: pre-wrap; overflow-wrap: anywhere; }
.tok { padding: .12rem .05rem; margin: 0 1px; border-radius: 3px; border: 1px solid transparent; cursor: default; }
.nl::before { content: "↵"; opacity: .55; }
.tok:hover { border-color: #000; }
.in-influence { outline: 2px solid #0a58ca; outline-offset: 1px; }
.in-emphasis { outline: 2px dashed #c2185b; outline-offset: 1px; }
.gen-marker { display: inline-block; margin: 0 .35rem; padding: 0 .35rem; font-family: system-ui, sans-serif;
  font-size: .75rem; color: #fff; background: #222; border-radius: 3px; line-height: 1.4; }
#tooltip { position: fixed; pointer-events: none; background: #222; color: #fff; padding: .35rem .5rem;
  border-radius: 4px; font-size: .8rem; white-space: pre-wrap; overflow-wrap: anywhere; display: none; z-index: 3;
  max-width: min(40rem, calc(100vw - 2rem));
  font-family: ui-monospace, Menlo, Consolas, monospace; }
"""

_JS = r"""
(function () {
  "use strict";
  var data = JSON.parse(document.getElementById("influence-data").textContent);
  var order = data.layer_order;
  var range = document.getElementById("layer-range");
  var select = document.getElementById("layer-select");
  var logBox = document.getElementById("log-scale");
  var stats = document.getElementById("layer-stats");
  var tip = document.getElementById("tooltip");
  var toks = Array.prototype.slice.call(document.querySelectorAll("#tokens .tok"));
  var barLabel = document.getElementById("colorbar-label");
  var barRamp = document.getElementById("colorbar-ramp");
  var barTicks = document.getElementById("colorbar-ticks");
  var FLOOR = 1e-8;
  // A white -> yellow -> orange -> red -> dark red ramp (like matplotlib's YlOrRd).
  var STOPS = [[255, 255, 255], [255, 237, 160], [254, 178, 76], [240, 59, 32], [128, 0, 38]];
  var LOW = 0.08;  // the smallest nonzero value gets ramp(LOW), not white, so it stays visible
  var current = order.indexOf(-1) >= 0 && order.length > 1 ? order[order.length - 1] : order[0];

  function ramp(t) {
    t = Math.min(1, Math.max(0, t)) * (STOPS.length - 1);
    var k = Math.min(Math.floor(t), STOPS.length - 2), f = t - k, a = STOPS[k], b = STOPS[k + 1];
    return [0, 1, 2].map(function (c) { return Math.round(a[c] + (b[c] - a[c]) * f); });
  }
  function maxOf(xs) { return xs.reduce(function (a, b) { return b > a ? b : a; }, -Infinity); }
  function minOf(xs) { return xs.reduce(function (a, b) { return b < a ? b : a; }, Infinity); }
  function fmt(v) { return v === null ? "n/a" : (v === 0 ? "0" : v.toPrecision(4)); }
  function nearest(layer) {
    var best = order[0];
    order.forEach(function (l) { if (Math.abs(l - layer) < Math.abs(best - layer)) { best = l; } });
    return best;
  }
  function colorOf(t) { return ramp(LOW + (1 - LOW) * t); }  // t in [0, 1]: position on the color bar
  function tickLabel(v) {
    var r = Number(v.toPrecision(2));
    return r === 0 || (r >= 1e-3 && r < 1e4) ? String(r) : r.toExponential().replace("e+", "e");
  }
  function niceStep(x) {  // the smallest of 1, 2, 5 times a power of ten that is >= x
    var p = Math.pow(10, Math.floor(Math.log10(x)));
    return [1, 2, 5, 10].map(function (m) { return m * p; }).filter(function (s) { return s >= x * (1 - 1e-9); })[0];
  }
  // The layer's scale: at(v) is the position in [0, 1] of a value on the color bar (and so its
  // color), ticks the labelled values. Log: from the smallest positive value (at least FLOOR) to
  // the largest, with ticks at powers of ten; linear: from 0 to the largest, with round steps.
  function scale(values, useLog) {
    var pos = values.filter(function (v) { return v !== null && v > 0; });
    if (!pos.length) { return { at: function () { return 0; }, ticks: [] }; }
    var hi = maxOf(pos), ticks = [];
    function tick(value, t, prefix) { ticks.push({ value: value, t: t, label: (prefix || "") + tickLabel(value) }); }
    function inner(value, t) { if (t > 0.15 && t < 0.85) { tick(value, t); } }
    if (useLog) {
      var min = minOf(pos), lo = Math.log10(Math.max(min, FLOOR)), top = Math.log10(hi);
      if (top - lo < 1e-9) {
        tick(hi, 1);
        return { at: function () { return 1; }, ticks: ticks };
      }
      var at = function (v) { return Math.min(1, Math.max(0, (Math.log10(Math.max(v, FLOOR)) - lo) / (top - lo))); };
      tick(Math.pow(10, lo), 0, min < FLOOR ? "≤" : "");
      var step = Math.max(1, Math.ceil((top - lo) / 5));
      for (var k = Math.ceil(lo / step) * step; k <= top; k += step) { inner(Math.pow(10, k), at(Math.pow(10, k))); }
      tick(hi, 1);
      return { at: at, ticks: ticks };
    }
    var d = niceStep(hi / 5);
    tick(0, 0);
    for (var j = 1; j * d < hi; j++) { inner(j * d, j * d / hi); }
    tick(hi, 1);
    return { at: function (v) { return Math.min(1, Math.max(0, v / hi)); }, ticks: ticks };
  }
  function drawBar(sc, useLog) {
    // Gradient stops where the ramp has its own stops, so the bar and the boxes interpolate alike.
    var stops = [[0, colorOf(0)]];
    STOPS.forEach(function (c, k) {
      var u = k / (STOPS.length - 1);
      if (u > LOW) { stops.push([(u - LOW) / (1 - LOW), c]); }
    });
    barRamp.style.background = sc.ticks.length ? "linear-gradient(to right, " + stops.map(function (s) {
      return "rgb(" + s[1].join(", ") + ") " + (100 * s[0]).toFixed(3) + "%";
    }).join(", ") + ")" : "";
    barTicks.textContent = "";
    sc.ticks.forEach(function (tk) {
      var el = document.createElement("span");
      el.className = "tick";
      el.style.left = (100 * tk.t).toFixed(3) + "%";
      el.setAttribute("data-value", String(tk.value));
      el.textContent = tk.label;
      barTicks.appendChild(el);
    });
    barLabel.textContent = data.metric_label.toLowerCase() + (useLog ? " (log scale)" : " (linear scale)");
  }
  function render() {
    var values = data.layers[String(current)];
    var sc = scale(values, logBox.checked);
    toks.forEach(function (el, i) {
      var v = values[i];
      if (v === null || !(v > 0)) { el.style.background = ""; el.style.color = ""; return; }
      var c = colorOf(sc.at(v));
      el.style.background = "rgb(" + c.join(",") + ")";
      el.style.color = (0.299 * c[0] + 0.587 * c[1] + 0.114 * c[2]) < 140 ? "#fff" : "#111";
    });
    drawBar(sc, logBox.checked);
    var gen = values.slice(data.generation_start).filter(function (v) { return v !== null; });
    var mean = gen.length ? gen.reduce(function (a, b) { return a + b; }, 0) / gen.length : null;
    var known = values.filter(function (v) { return v !== null; });
    stats.textContent = "layer " + current + (current === -1 ? " (span indicator)" : "") +
      " · mean over generated tokens: " + fmt(mean) + " · max: " + fmt(known.length ? maxOf(known) : null);
    range.value = String(current);
    select.value = String(current);
  }
  function setLayer(layer) { current = nearest(layer); render(); }
  range.addEventListener("input", function () { setLayer(parseInt(range.value, 10)); });
  select.addEventListener("change", function () { setLayer(parseInt(select.value, 10)); });
  logBox.addEventListener("change", render);
  toks.forEach(function (el) {
    el.addEventListener("mousemove", function (ev) {
      var i = parseInt(el.getAttribute("data-i"), 10), v = data.layers[String(current)][i];
      tip.textContent = "position " + i + (i >= data.generation_start ? " (generated)" : " (prompt)") +
        "\ntoken " + JSON.stringify(data.tokens[i]) +
        "\n" + data.metric_label.toLowerCase() + " (layer " + current + "): " + fmt(v) +
        (v > 0 ? "  log10 " + Math.log10(v).toFixed(2) : "") +
        (el.classList.contains("in-influence") ? "\nin the influence span" : "") +
        (el.classList.contains("in-emphasis") ? "\nin an emphasis span" : "");
      tip.style.display = "block";
      tip.style.left = Math.min(ev.clientX + 14, window.innerWidth - tip.offsetWidth - 8) + "px";
      tip.style.top = (ev.clientY + 16) + "px";
    });
    el.addEventListener("mouseleave", function () { tip.style.display = "none"; });
  });
  window.guideInfluence = { data: data, setLayer: setLayer, layer: function () { return current; },
    useLog: function (on) { logBox.checked = on; render(); } };
  render();
})();
"""


def influence_html(result: InfluenceData, path: str | os.PathLike[str]) -> str:
    """Save a self-contained token heatmap of every layer, viewable offline.

    Every token is a box colored by its value in the chosen layer (linear or log scale), with a
    layer slider and select, the spans outlined, a marker where generation starts and a tooltip
    with the raw token, its position and value. The data is embedded as JSON.

    Args:
        result: the influence (or rollout) to show.
        path: where to write the ``.html`` file; its folder must exist.

    Returns:
        ``path`` as a string.
    """
    payload = html_payload(result)
    layers = payload["layer_order"]
    if not layers:
        raise GuideValueError("this influence result has no layers to show")
    default = layers[-1]
    contiguous = layers == list(range(layers[0], layers[-1] + 1))
    options = "".join(
        f'<option value="{k}"{" selected" if k == default else ""}>{k}{" (span indicator)" if k == -1 else ""}</option>'
        for k in layers
    )
    title = describe(result)
    spans = (
        "; ".join(
            f"{s.kind}{'' if s.kind == 'influence' else f' level {s.level}'} “{_short(s.text, 60)}” "
            f"(tokens {s.token_start}–{s.token_end - 1}, Δ = {_format_number(s.delta)})"
            for s in result.spans
        )
        or "none"
    )
    page = f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{html.escape(title)}</title>
<style>{_CSS}</style>
</head>
<body>
<h1>{html.escape(title)}</h1>
<div class="meta">{len(result.tokens)} tokens; generation starts at position {result.generation_start}.
Spans: {html.escape(spans)}</div>
<div class="controls">
  <label for="layer-range">layer</label>
  <input type="range" id="layer-range" min="{layers[0]}" max="{layers[-1]}" step="1" value="{default}"
    aria-label="layer"{"" if contiguous else ' title="layers missing from the result snap to the nearest one"'}>
  <select id="layer-select" aria-label="layer">{options}</select>
  <label><input type="checkbox" id="log-scale" checked> log scale</label>
  <span class="legend"><span id="colorbar-label"></span>
    <span id="colorbar"><span id="colorbar-ramp"></span><span id="colorbar-ticks"></span></span></span>
  <span id="layer-stats" class="legend"></span>
</div>
<div class="key">Each box is a token colored by its {html.escape(payload["metric_label"].lower())} in the chosen layer,
on the scale of the color bar (uncolored: zero; on the log scale, values below {LOG_FLOOR:g} take its lowest color).
<span class="sample in-influence">solid outline</span>: influence span;
<span class="sample in-emphasis">dashed outline</span>: emphasis span; ↵: newline. Hover a token for details.</div>
<div id="tokens">{_token_markup(result)}</div>
<div id="tooltip" role="tooltip"></div>
<script type="application/json" id="influence-data">{_script_json(payload)}</script>
<script>{_JS}</script>
</body>
</html>
"""
    target = os.fspath(path)
    try:
        with open(target, "w", encoding="utf-8") as handle:
            handle.write(page)
    except OSError as error:
        raise GuideError(f"cannot write the HTML page to {target!r}: {error}") from error
    return target
