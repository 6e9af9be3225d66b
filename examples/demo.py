"""GUIDE in one screen: the same tagged prompt with and without emphasis, side by side.

Runs offline on the embedded SmolLM2-135M-Instruct:

    python examples/demo.py [--max-new-tokens 60] [--delta-mid 1.0]
"""

from __future__ import annotations

import argparse
import textwrap
import time

from guide_engine import GuideEngine

DOCUMENT = (
    "The Eiffel Tower is a wrought-iron lattice tower on the Champ de Mars in Paris, France. It is named after "
    "the engineer Gustave Eiffel, whose company designed and built the tower for the 1889 World's Fair."
)
PROMPT = f"<!!!-> Rewrite in French: <-!!!> {DOCUMENT}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-new-tokens", type=int, default=60)
    parser.add_argument("--delta-mid", type=float, default=1.0, help="level-3 tags get 2 × delta-mid")
    args = parser.parse_args()

    started = time.perf_counter()
    engine = GuideEngine.from_pretrained()  # the embedded model, offline
    print(f"Loaded SmolLM2-135M-Instruct in {time.perf_counter() - started:.1f} s\n")
    print(f"Prompt: {PROMPT}\n")

    plain = engine.generate(PROMPT, max_new_tokens=args.max_new_tokens, delta_mid=0.0)
    guided = engine.generate(PROMPT, max_new_tokens=args.max_new_tokens, delta_mid=args.delta_mid)
    span = guided.spans[0]
    print(f"Span {span.text.strip()!r}: tokens {span.token_start}-{span.token_end}, Δ = {span.delta:g}\n")

    width = 48
    left = textwrap.wrap(plain.text, width) or [""]
    right = textwrap.wrap(guided.text, width) or [""]
    print(f"{'Δ = 0 (no emphasis)':<{width}} | Δ = {span.delta:g} (GUIDE)")
    print(f"{'-' * width}-+-{'-' * width}")
    for i in range(max(len(left), len(right))):
        a = left[i] if i < len(left) else ""
        b = right[i] if i < len(right) else ""
        print(f"{a:<{width}} | {b}")
    print(
        f"\n{plain.completion_tokens} vs {guided.completion_tokens} tokens; "
        f"finish: {plain.finish_reason} vs {guided.finish_reason}"
    )

    print("\nStreaming, with a level-1 tag:")
    for piece in engine.stream("<!-> Answer in one word. <-!> What is the capital of France?", max_new_tokens=20):
        print(piece, end="", flush=True)
    print()


if __name__ == "__main__":
    main()
