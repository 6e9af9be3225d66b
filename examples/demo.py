"""GUIDE in one screen: an instruction before a text, with and without emphasis, side by side.

Runs offline on the embedded SmolLM2-135M-Instruct:

    python examples/demo.py [--max-new-tokens 40] [--delta-mid 1.0] [--skip-long]

It shows the default (the paper's GUIDE at Δ = 1 on the tagged instruction) on a short and on a
long prompt, and on the long one the setting the held-out evaluation recommends there,
``contrast="auto"`` (see ``docs/choosing-delta.md``). Both texts are held-out texts of that
evaluation where emphasis changed the answer; the rates printed beside them, over all held-out
texts of two corpora, are what to expect.
"""

from __future__ import annotations

import argparse
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

from tqdm import tqdm  # installed with transformers

from guide_engine import GenerationResult, GuideEngine, escape_tags

# From the Python documentation (pydoc_data.topics), as the quality benchmark cuts it: 256 tokens.
TEXT = (
    'A special attribute of every module is "__dict__". This is the dictionary containing the module’s symbol '
    "table. Modifying this dictionary will actually change the module’s symbol table, but direct assignment to the "
    '"__dict__" attribute is not possible (you can write "m.__dict__[\'a\'] = 1", which defines "m.a" to be '
    '"1", but you can’t write "m.__dict__ = {}"). Modifying "__dict__" directly is not recommended.\n\n'
    "Modules built into the interpreter are written like this: \"<module 'sys' (built-in)>\". If loaded from a "
    "file, they are written as \"<module 'os' from '/usr/local/lib/pythonX.Y/os.pyc'>\".\n\n"
    "There are three basic sequence types: lists, tuples, and range objects. Additional sequence types tailored "
    "for processing of binary data and text strings are described in dedicated sections.\n\n"
    "The operations in the following table are supported by most sequence types, both mutable and immutable. "
    'The "collections.abc.Sequence" ABC is provided to make it easier to correctly implement these operations '
    "on custom sequence types.\n\nThis table lists the sequence operations sorted in ascending priority."
)
PROMPT = f"<!!->Summarize this text in French.<-!!>\n\n{escape_tags(TEXT)}"
LONG_TEXT = (Path(__file__).parent / "texts" / "held-out-1024.txt").read_text(encoding="utf-8")  # 1024 tokens
LONG_PROMPT = f"<!!->Summarize this text in French.<-!!>\n\n{escape_tags(LONG_TEXT)}"
EVIDENCE = (
    "This text was picked from the held-out half of the evaluation because emphasis changed the answer. Over all\n"
    "held-out texts of 256 tokens with the instruction first, French answers without emphasis → with the default:\n"
    "8/12 → 11/12 on the Python documentation, 11/12 → 12/12 on the project's prose (a lead, not proof: p ≥ 0.25)."
)
LONG_EVIDENCE = (
    "Also a held-out text where emphasis changed the answer. Over the held-out texts of 1024 tokens with the\n"
    'instruction first, French answers without emphasis / with the default / with contrast="auto":\n'
    "0/12, 0/12, 6/12 on the Python documentation and 0/12, 3/12, 7/12 on the project's prose. Far from the\n"
    'end the default barely moves the answer; contrast="auto" (a second batch row, only for emphasis ≥ 512\n'
    "tokens before the end) does, for instructions like this one. contrast=4 does more here (8/12 and\n"
    "10/12) but fails questions (3/12 where no emphasis finds 11/12). See docs/choosing-delta.md."
)


def side_by_side(left_title: str, left: str, right_title: str, right: str, width: int = 48) -> None:
    left_lines, right_lines = textwrap.wrap(left, width) or [""], textwrap.wrap(right, width) or [""]
    print(f"{left_title:<{width}} | {right_title}")
    print(f"{'-' * width}-+-{'-' * width}")
    for i in range(max(len(left_lines), len(right_lines))):
        a = left_lines[i] if i < len(left_lines) else ""
        b = right_lines[i] if i < len(right_lines) else ""
        print(f"{a:<{width}} | {b}")


def generate(engine: GuideEngine, prompt: str, label: str, **options: Any) -> GenerationResult:
    """One answer, streamed under a progress bar (on stderr): the prompt is read, then each text piece ticks."""
    started = time.perf_counter()
    stream = engine.stream(prompt, **options)
    with tqdm(total=options["max_new_tokens"], desc=f"  {label}", unit="piece", leave=False, file=sys.stderr) as bar:
        bar.set_postfix_str("reading the prompt")
        for _ in stream:
            bar.set_postfix_str("writing")
            bar.update(1)
    result = stream.run_to_end()
    print(f"  {label}: {result.completion_tokens} tokens in {time.perf_counter() - started:.1f} s", flush=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-new-tokens", type=int, default=40)
    parser.add_argument("--delta-mid", type=float, default=1.0, help="Δ of the <!!-> instruction")
    parser.add_argument("--skip-long", action="store_true", help="skip the 1024-token example")
    args = parser.parse_args()

    started = time.perf_counter()
    engine = GuideEngine.from_pretrained()  # the embedded model, offline
    print(f"Loaded SmolLM2-135M-Instruct in {time.perf_counter() - started:.1f} s\n")
    print(f"Prompt ({len(engine.encode(PROMPT).input_ids)} tokens): {PROMPT[:160]!r} …\n")

    options = {"max_new_tokens": args.max_new_tokens}
    print("Generating the two answers:", flush=True)
    plain = generate(engine, PROMPT, "no emphasis", delta_mid=0.0, **options)
    guided = generate(engine, PROMPT, f"GUIDE, Δ = {args.delta_mid:g}", delta_mid=args.delta_mid, **options)
    span = guided.spans[0]
    print(f"\nEmphasized: {span.text.strip()!r}, tokens {span.token_start}-{span.token_end}, Δ = {span.delta:g}\n")
    side_by_side("No emphasis", plain.text, f"GUIDE, Δ = {span.delta:g} (the default)", guided.text)
    print(f"\n{EVIDENCE}")
    print("SmolLM2-135M's French is poor: emphasis changes which language it answers in, not how well it writes.")

    if not args.skip_long:
        print(f"\nThe same instruction before a longer text ({len(engine.encode(LONG_PROMPT).input_ids)} tokens):\n")
        print('Generating the two answers (contrast="auto" runs a second batch row: about twice the time):', flush=True)
        alone = generate(engine, LONG_PROMPT, f"GUIDE, Δ = {args.delta_mid:g}", delta_mid=args.delta_mid, **options)
        auto = generate(engine, LONG_PROMPT, 'contrast="auto"', delta_mid=args.delta_mid, contrast="auto", **options)
        print()
        default = f"GUIDE, Δ = {args.delta_mid:g} (the default)"
        side_by_side(default, alone.text, 'GUIDE, Δ = 1, contrast="auto"', auto.text)
        print(f"\n{LONG_EVIDENCE}")

    print("\nStreaming, with a level-1 tag:")
    for piece in engine.stream("<!-> Answer in one word. <-!> What is the capital of France?", max_new_tokens=20):
        print(piece, end="", flush=True)
    print()


if __name__ == "__main__":
    main()
