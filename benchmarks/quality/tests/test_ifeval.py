"""IFEval benchmark: the scorer glue (IFEval's checkers), the tagging rule, and the report (no model)."""

from __future__ import annotations

import hashlib
import sys

import pytest

from benchmarks.quality.ifeval_scoring import IFEvalPrompt, load_prompts, score
from benchmarks.quality.ifeval_tagging import CLOSE, OPEN, sentences, tag_prompt
from guide_engine import parse_tags

needs_py311 = pytest.mark.skipif(sys.version_info < (3, 11), reason="if-verifiable needs Python 3.11 or later")

PROMPTS = {item.key: item for item in load_prompts()}


def one(instruction_id: str, **kwargs: object) -> IFEvalPrompt:
    return IFEvalPrompt(0, "a prompt", (instruction_id,), (dict(kwargs),))


def verdicts(item: IFEvalPrompt, response: str) -> list[tuple[bool, bool]]:
    return [(v["strict"], v["loose"]) for v in score(item, response)["instructions"]]


# ------------------------------------------------------------------------------------- the data


def test_the_data_is_ifevals_541_prompts_with_25_instruction_kinds():
    assert len(PROMPTS) == 541
    assert sum(len(item.instruction_id_list) for item in PROMPTS.values()) == 834
    assert len({i for item in PROMPTS.values() for i in item.instruction_id_list}) == 25
    assert sum(item.half == "odd" for item in PROMPTS.values()) == 299  # by key parity; 242 even


# ------------------------------------------------------------------------------------- scoring


@needs_py311
def test_commas_short_answer_and_no_highlights_fail_key_1000():
    # no commas required, 3 highlighted sections, at least 300 words
    result = score(PROMPTS[1000], "Raymond III was a count, and a regent.")
    assert [(v["strict"], v["loose"]) for v in result["instructions"]] == [(False, False)] * 3
    assert result["prompt_strict"] is False and result["prompt_loose"] is False


@needs_py311
def test_an_answer_that_follows_everything_passes_strictly():
    words = " ".join(["word"] * 300)
    response = f"*part one* *part two* *part three* {words}"
    result = score(PROMPTS[1000], response)
    assert result["prompt_strict"] is True and result["prompt_loose"] is True
    assert verdicts(PROMPTS[1000], response.replace("word word", "word, word", 1))[0] == (False, False)


@needs_py311
def test_loose_accepts_an_answer_with_a_preamble_line_strict_does_not():
    # key 2239: "Put your entire response in double quotation marks."
    response = 'Here is the sentence:\n"I hurled my hatred into the blazing fire."'
    result = score(PROMPTS[2239], response)
    assert verdicts(PROMPTS[2239], response) == [(False, True)]
    assert result["prompt_strict"] is False and result["prompt_loose"] is True
    assert verdicts(PROMPTS[2239], '"I hurled my hatred into the blazing fire."') == [(True, True)]


@needs_py311
def test_loose_removes_markdown_asterisks_for_the_end_phrase():
    item = one("startend:end_checker", end_phrase="Is there anything else I can help with?")
    assert verdicts(item, "Done. **Is there anything else I can help with?**") == [(False, True)]
    assert verdicts(item, "Done. Is there anything else I can help with?") == [(True, True)]


@needs_py311
def test_a_blank_answer_fails_every_instruction_instead_of_dropping_them():
    result = score(PROMPTS[1000], "   ")
    assert len(result["instructions"]) == 3
    assert not any(v["strict"] or v["loose"] for v in result["instructions"])


@needs_py311
def test_lowercase_checker():
    item = one("change_case:english_lowercase")
    assert verdicts(item, "the quick brown fox jumps over the lazy dog near the river bank.") == [(True, True)]
    assert verdicts(item, "The quick brown fox jumps over the lazy dog near the river bank.") == [(False, False)]


@needs_py311
def test_sentences_are_counted_by_punkt_which_knows_abbreviations():
    # A split at every period would count three sentences here; NLTK's English Punkt counts two.
    text = "Dr. Smith went home. He was tired."
    assert verdicts(one("length_constraints:number_sentences", relation="less than", num_sentences=3), text) == [
        (True, True)
    ]
    assert verdicts(one("length_constraints:number_sentences", relation="at least", num_sentences=3), text) == [
        (False, False)
    ]


@needs_py311
def test_capital_words_are_counted_with_nltk_word_tokenize():
    item = one("change_case:capital_word_frequency", capital_frequency=5, capital_relation="at least")
    assert verdicts(item, "HELLO WORLD. I AM HERE.") == [(True, True)]  # HELLO WORLD I AM HERE
    assert verdicts(item, "HELLO WORLD. I am here.") == [(False, False)]


@needs_py311
def test_prompt_level_needs_every_instruction():
    # key 3534: lowercase, at least 20 sentences, fewer than 31 sentences
    text = " ".join(f"this is sentence number {n} of my little tweet storm about the earth." for n in range(5))
    result = score(PROMPTS[3534], text)
    assert [v["strict"] for v in result["instructions"]] == [True, False, True]
    assert result["prompt_strict"] is False


# ------------------------------------------------------------------------------------- tagging

# The rule was fixed before any tagged answer was generated; this digest of its output on all 541
# prompts keeps it fixed. A change to the rule must change this line, visibly, in its commit.
TAGGED_DIGEST = "353dbf912dfaf786639454f2f36d95496cb89c98b520037a7c2dfe438d7084a7"


def test_the_rule_is_the_one_fixed_before_the_results():
    joined = "\x00".join(tag_prompt(PROMPTS[key].prompt) for key in sorted(PROMPTS))
    assert hashlib.sha256(joined.encode()).hexdigest() == TAGGED_DIGEST


@pytest.mark.parametrize("key", sorted(PROMPTS))
def test_tags_leave_the_prompt_unchanged_and_never_cover_the_task(key):
    prompt = PROMPTS[key].prompt
    parsed = parse_tags(tag_prompt(prompt))
    assert parsed.text == prompt
    task = next(s for s in sentences(prompt) if s.role == "task")
    for span in parsed.spans:
        assert span.end <= task.start or span.start >= task.end
        assert prompt[span.start : span.end].strip() == prompt[span.start : span.end]


def test_instruction_sentences_after_the_task_are_tagged():
    assert tag_prompt(PROMPTS[1001].prompt) == (
        "I am planning a trip to Japan, and I would like thee to write an itinerary for my journey in a "
        f"Shakespearean style. {OPEN}You are not allowed to use any commas in your response.{CLOSE}"
    )
    assert tag_prompt(PROMPTS[3126].prompt) == (
        f'Write an article named "How to conduct a job interview". {OPEN}Include at least one placeholder, '
        f"such as [question].{CLOSE}"
    )


def test_leading_instructions_are_tagged_and_the_task_after_them_is_not():
    tagged = tag_prompt(PROMPTS[16].prompt)
    assert tagged.startswith(f"{OPEN}First repeat the request below, word for word without change, then give your")
    assert f"{CLOSE}\n\nWrite a story about a man" in tagged  # the task opens untagged


def test_context_sentences_and_quoted_material_are_not_tagged():
    tagged = tag_prompt(PROMPTS[1147].prompt)
    assert '\n"Hi guys. The work was done' in tagged  # the quoted statement stays untagged
    assert tagged.endswith(f"{OPEN}Do not include the following keywords: field, thanks, issue, collaborator.{CLOSE}")
    assert tagged.count(OPEN) == 1
    dog_toys = tag_prompt(PROMPTS[2164].prompt)
    assert "It's made of latex, and is designed for dogs of all ages and species." in parse_tags(dog_toys).text
    assert f"{OPEN}It's made" not in dog_toys and f"{OPEN}The response must contain at least 3" in dog_toys


def test_abbreviations_do_not_cut_a_sentence():
    # key 3057 is one sentence ("…, i.e. <<title>>."): the task, so nothing is tagged
    assert tag_prompt(PROMPTS[3057].prompt) == PROMPTS[3057].prompt
    assert [s.role for s in sentences("Write a poem. End it with P.S. at the end.")] == ["task", "instruction"]


def test_literal_tag_text_in_a_prompt_is_escaped():
    prompt = "Explain the marker <!-> to me. Do not use any commas."
    tagged = tag_prompt(prompt)
    assert parse_tags(tagged).text == prompt
    assert len(parse_tags(tagged).spans) == 1


# ------------------------------------------------------------------------------------- report


def _record(condition: str, key: int, strict: list[bool], **extra: object) -> dict:
    instructions = [{"id": f"punctuation:x{i}", "strict": s, "loose": True} for i, s in enumerate(strict)]
    return {
        "model": "m",
        "condition": condition,
        "key": key,
        "half": "odd" if key % 2 else "even",
        "options": {"max_new_tokens": 512},
        "instructions": instructions,
        "prompt_strict": all(strict),
        "prompt_loose": True,
        "finish_reason": "length" if key == 1 else "stop",
        "degenerate": False,
        "words": 10,
        "completion_tokens": 20,
        **extra,
    }


def test_report_counts_wins_losses_and_groups_against_untagged(tmp_path):
    from benchmarks.quality.ifeval_report import summarize, write_report

    base = [_record("untagged", k, [k % 3 == 0, True]) for k in (1, 3, 5, 7, 9)]  # 3 and 9 pass
    tagged = [_record("default", k, [k in (1, 3, 5), True]) for k in (1, 3, 5, 7, 9)]  # 1, 3, 5 pass
    entries = {e["condition"]: e for e in summarize(base + tagged) if e["half"] == "odd"}
    assert entries["untagged"]["prompt_strict"]["successes"] == 2
    assert entries["untagged"]["instruction_strict"]["n"] == 10
    assert entries["untagged"]["cut"]["successes"] == 1
    versus = entries["default"]["versus_untagged"]
    assert (versus["wins"], versus["losses"]) == (2, 1)  # wins 1 and 5, loses 9
    assert versus["mcnemar_p"] == 1.0
    assert versus["groups"]["punctuation"] == [2, 1]
    path = write_report(base + tagged, [{"command": "python -m x", "minutes": 6.0}], str(tmp_path))
    with open(path, encoding="utf-8") as handle:
        text = handle.read()
    assert "| m | default | 5 | 60.0% (3/5, " in text
    assert (tmp_path / "accuracy.png").stat().st_size > 0


def test_a_sentence_ends_after_a_closing_quote():
    # key 2143 opens with a quoted message; the instructions after it are sentences of their own
    tagged = tag_prompt(PROMPTS[2143].prompt)
    assert tagged.endswith(
        f'cause." {OPEN}Please expand it into at least 5 sentences.{CLOSE} {OPEN}Do not use the words '
        f"reschedule or free.{CLOSE}"
    )


# ------------------------------------------------------------------------------------- runner


class _FakeEngine:
    """Answers every prompt with its own length; counts the rows it was asked for."""

    def __init__(self) -> None:
        self.rows: list[str] = []
        self.options: list[dict] = []

    def generate_batch(self, prompts: list[str], **options: object) -> list[object]:
        from types import SimpleNamespace

        self.rows += prompts
        self.options.append(options)
        return [
            SimpleNamespace(text=f"answer {len(p)}", finish_reason="stop", completion_tokens=3, prompt_tokens=9)
            for p in prompts
        ]


@needs_py311
def test_runner_writes_the_issue_fields_resumes_and_copies_prompts_without_tags(tmp_path):
    import argparse

    from benchmarks.quality.ifeval import identity, run
    from benchmarks.quality.runner import Sink

    args = argparse.Namespace(
        model="m", halves=["odd"], conditions=["untagged", "default"], limit=6, max_new_tokens=64, batch_size=4
    )
    sink = Sink(str(tmp_path / "records.jsonl"), resume=True, identity=identity)
    engine = _FakeEngine()
    run(engine, sink, args, log=lambda added: None)
    by = {(r["condition"], r["key"]): r for r in sink.records}
    assert len(by) == 12 and all(r["half"] == "odd" for r in sink.records)
    untagged = [r for r in sink.records if r["condition"] == "untagged"]
    assert all(r["tagged_prompt"] == PROMPTS[r["key"]].prompt for r in untagged)
    assert untagged[0]["options"] == {"max_new_tokens": 64, "temperature": 0.0}
    for r in sink.records:
        assert {
            "response",
            "finish_reason",
            "completion_tokens",
            "prompt_strict",
            "prompt_loose",
            "instructions",
        } <= set(r)
        assert len(r["instructions"]) == len(PROMPTS[r["key"]].instruction_id_list)
    tagged = [r for r in sink.records if r["condition"] == "default"]
    assert all(r["options"]["delta_mid"] == 1.0 for r in tagged)
    copied = [r for r in tagged if "copied_from" in r]
    assert all(r["tagged_prompt"] == PROMPTS[r["key"]].prompt for r in copied)
    assert all(OPEN in r["tagged_prompt"] for r in tagged if "copied_from" not in r)
    assert len(engine.rows) == 12 - len(copied)
    # resume: a second run skips what is done and takes the next 6 prompts of each condition
    again = Sink(str(tmp_path / "records.jsonl"), resume=True, identity=identity)
    run(engine, again, args, log=lambda added: None)
    assert len(again.records) == 24 and len({identity(r) for r in again.records}) == 24
