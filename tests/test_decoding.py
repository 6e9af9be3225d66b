"""Incremental detokenization and stop strings: equal to decoding everything at once, in linear time."""

from __future__ import annotations

import pytest

from guide_engine.decoding import IncrementalDetokenizer, RowDecoder, StreamDetokenizer, detokenizer_for

TEXTS = [
    "Hello world, this is plain ASCII text.",
    "Accents: héllo wörld, ça va? Ünïcödé ßtraße.",
    "CJK and emoji: 日本語のテキスト 🙂🚀 mixed with English.",
    "  leading spaces,\ttabs\nand\n\nnew lines  ",
]
TRICKY = [
    *TEXTS,
    "Zero-width joiners: 👨‍👩‍👧‍👦 and 🏳️‍🌈, combining: é ä, Hangul 한국어, Thai ภาษาไทย.",
    "Mixed scripts: Ελληνικά, русский, עברית, العربية, 中文字符, ひらがな, 𝔘𝔫𝔦𝔠𝔬𝔡𝔢 and 🀄🃏.",
]


class CountingTokenizer:
    """Wraps a tokenizer and counts how many ids each ``decode`` call receives."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.ids_decoded = 0

    def decode(self, ids, **kwargs):
        self.ids_decoded += len(ids)
        return self.tokenizer.decode(ids, **kwargs)


@pytest.mark.parametrize("text", TEXTS)
def test_pieces_join_to_the_full_decode(smol_tokenizer, text):
    ids = smol_tokenizer(text, add_special_tokens=False)["input_ids"]
    detokenizer = IncrementalDetokenizer(smol_tokenizer)
    pieces = [detokenizer.push(i) for i in ids] + [detokenizer.flush()]
    assert "".join(pieces) == smol_tokenizer.decode(ids, skip_special_tokens=True)
    assert not any("\ufffd" in piece for piece in pieces)  # no half characters are shown


def _pieces(detokenizer, ids: list[int]) -> list[str]:
    return [detokenizer.push(i) for i in ids] + [detokenizer.flush()]


def _cuts_inside_a_character(tokenizer, ids: list[int]) -> list[int]:
    return [n for n in range(1, len(ids)) if tokenizer.decode(ids[:n]).endswith("\ufffd")]


@pytest.mark.parametrize("text", TRICKY)
def test_decode_stream_and_our_fallback_give_the_same_text(smol_tokenizer, text):
    """tokenizers' DecodeStream (fast tokenizers) and our window (the fallback) agree with ``decode``,
    with a special token in the middle, and with the generation cut inside a multi-byte character."""
    ids = smol_tokenizer(text, add_special_tokens=False)["input_ids"]
    ids = ids[: len(ids) // 2] + [smol_tokenizer.eos_token_id] + ids[len(ids) // 2 :]
    assert isinstance(detokenizer_for(smol_tokenizer), StreamDetokenizer)
    for row in (ids, *(ids[:n] for n in _cuts_inside_a_character(smol_tokenizer, ids)[-2:])):
        stream = _pieces(StreamDetokenizer(smol_tokenizer), row)
        ours = _pieces(IncrementalDetokenizer(smol_tokenizer), row)
        assert "".join(stream) == "".join(ours) == smol_tokenizer.decode(row, skip_special_tokens=True)
        assert stream[:-1] == ours[:-1]  # piece by piece, too
        assert not any("\ufffd" in piece for piece in stream[:-1])  # no half character before the end


def test_a_cut_character_is_flushed_at_the_end_by_both(smol_tokenizer):
    ids = smol_tokenizer("ok 🀄🃏", add_special_tokens=False)["input_ids"]
    row = ids[:-1]  # the last character's last byte never comes
    assert smol_tokenizer.decode(row).endswith("\ufffd")
    for detokenizer in (StreamDetokenizer(smol_tokenizer), IncrementalDetokenizer(smol_tokenizer)):
        shown = "".join(detokenizer.push(i) for i in row)
        assert shown == "ok 🀄"
        assert shown + detokenizer.flush() == smol_tokenizer.decode(row)


def test_tokenizers_without_a_fast_backend_get_our_detokenizer(smol_tokenizer):
    assert isinstance(detokenizer_for(CountingTokenizer(smol_tokenizer)), IncrementalDetokenizer)


def test_decoding_work_is_linear_in_the_generated_length(smol_tokenizer):
    ids = smol_tokenizer(" ".join(TEXTS) * 20, add_special_tokens=False)["input_ids"]
    counting = CountingTokenizer(smol_tokenizer)
    decoder = RowDecoder(counting, stop=("never appears",), eos_ids=set())
    for i in ids:
        decoder.push(i)
    decoder.finish()
    assert decoder.text == smol_tokenizer.decode(ids, skip_special_tokens=True)
    # Each step decodes a window of a few ids (two decodes of at most a handful each), not the whole row.
    assert counting.ids_decoded <= 12 * len(ids), (counting.ids_decoded, len(ids))


@pytest.mark.parametrize("stop", ["wörld", "🙂", "ASCII text", "\n\n"])
def test_stop_string_cuts_the_text_and_is_never_shown(smol_tokenizer, stop):
    text = next(t for t in TEXTS if stop in t)
    ids = smol_tokenizer(text, add_special_tokens=False)["input_ids"]
    decoder = RowDecoder(smol_tokenizer, stop=(stop, "zzz-not-there"), eos_ids=set())
    shown = []
    for i in ids:
        shown.append(decoder.push(i))
        if decoder.finish_reason is not None:
            break
    shown.append(decoder.finish())
    assert decoder.finish_reason == "stop"
    assert decoder.text == text[: text.find(stop)]
    assert "".join(shown) == decoder.text


def test_end_of_sequence_finishes_with_stop_and_is_not_text(smol_tokenizer):
    eos = smol_tokenizer.eos_token_id
    ids = smol_tokenizer("Done here.", add_special_tokens=False)["input_ids"]
    decoder = RowDecoder(smol_tokenizer, stop=(), eos_ids={eos})
    shown = "".join(decoder.push(i) for i in [*ids, eos])
    assert (decoder.finish_reason, shown, decoder.text) == ("stop", "Done here.", "Done here.")
    assert decoder.finish() == ""  # already finished: nothing more, reason unchanged
    assert decoder.finish_reason == "stop"


def test_length_finish_flushes_the_held_back_text(smol_tokenizer):
    ids = smol_tokenizer("abc def", add_special_tokens=False)["input_ids"]
    decoder = RowDecoder(smol_tokenizer, stop=("a very long stop string",), eos_ids=set())
    shown = "".join(decoder.push(i) for i in ids)
    assert shown == ""  # everything could still be the start of the stop string
    assert decoder.finish() == "abc def"
    assert decoder.finish_reason == "length"
