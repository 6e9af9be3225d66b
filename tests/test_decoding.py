"""Incremental detokenization and stop strings: equal to decoding everything at once, in linear time."""

from __future__ import annotations

import pytest

from guide_engine.decoding import IncrementalDetokenizer, RowDecoder

TEXTS = [
    "Hello world, this is plain ASCII text.",
    "Accents: héllo wörld, ça va? Ünïcödé ßtraße.",
    "CJK and emoji: 日本語のテキスト 🙂🚀 mixed with English.",
    "  leading spaces,\ttabs\nand\n\nnew lines  ",
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
