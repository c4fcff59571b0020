"""Speakable text: how fast the streaming markdown filter goes, next to a peer in the same run.

``python -m bench.speakable`` feeds a realistic LLM answer (headers, lists, emphasis, links,
URLs, a code block, a table; cut into LLM-sized tokens) through
:class:`fish_notebook.speakable.SpeakableFilter`, token by token, and prints:

- its throughput (tokens/s, characters/s), median of interleaved repeats;
- the ratio against the **peer**: a one-pass regular-expression stripper of the whole text
  (not streaming, and much less careful: the least work that removes the same markup), timed
  in the same repeats;
- the headroom: how many times faster than a fast LLM writes (200 tokens/s) it is.

A print, not a pass/fail test; the numbers drift with the machine's load, the ratios less.
"""

from __future__ import annotations

import re
import statistics
import time

from fish_notebook.sources import llm_tokens
from fish_notebook.speakable import SpeakableFilter

FAST_LLM_TOKENS_PER_SECOND = 200.0

ANSWER = """## Getting started with **asyncio**

Here's a *short* overview. See [the docs](https://docs.python.org/3/library/asyncio.html)
or https://realpython.com/async-io-python/ for more. 🎉

1. Create an event loop with `asyncio.run()`.
2. Define coroutines with `async def`.
3. Use `await` to wait for them — ~~never~~ rarely block.

- **Tasks** run concurrently.
- _Futures_ hold results.

```python
import asyncio

async def main():
    await asyncio.sleep(1)  # *not* spoken
    print("done")

asyncio.run(main())
```

| Function | Purpose |
|---|---|
| `run()` | runs a coroutine |
| `gather()` | runs several |

> Note: in Jupyter, `await` works at the top level.<br>
That's it! [happy] Any questions?
"""


def _peer(text: str) -> str:
    """The least a non-streaming stripper does: a few whole-text substitutions."""
    text = re.sub(r"```.*?```", "Here is a code block.", text, flags=re.DOTALL)
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", text)
    text = re.sub(r"https?://([^/\s]+)\S*", r"\1", text)
    text = re.sub(r"^\s*(#{1,6}|[-*+]|\d+\.|>)\s+", "", text, flags=re.MULTILINE)
    text = re.sub(r"^\|?[\s:|-]+\|?$", "", text, flags=re.MULTILINE)
    text = re.sub(r"<[^>]+>|[*_`|~]|[\U0001F300-\U0001FAFF]", "", text)
    return text


def _ours(tokens: list[str]) -> str:
    sub = SpeakableFilter()
    spoken: list[str] = []
    for token in tokens:
        spoken += [getattr(item, "spoken", "") for item in sub.feed(token)]
    spoken += [getattr(item, "spoken", "") for item in sub.close()]
    return "".join(spoken)


def measure(copies: int = 20, repeats: int = 9) -> dict[str, float]:
    """Median seconds for ours and the peer over ``copies`` answers, interleaved repeats."""
    text = ANSWER * copies
    tokens = llm_tokens(text)
    ours: list[float] = []
    peer: list[float] = []
    for repeat in range(repeats):
        runs = [("ours", lambda: _ours(tokens)), ("peer", lambda: _peer(text))]
        for name, run in runs if repeat % 2 == 0 else runs[::-1]:
            start = time.perf_counter()
            run()
            (ours if name == "ours" else peer).append(time.perf_counter() - start)
    return {
        "tokens": float(len(tokens)),
        "chars": float(len(text)),
        "ours": statistics.median(ours),
        "peer": statistics.median(peer),
    }


def main() -> None:
    result = measure()
    tokens_per_second = result["tokens"] / result["ours"]
    print("speakable text: SpeakableFilter fed an LLM answer token by token")
    print(
        f"  ours  {result['ours'] * 1000:8.1f} ms  {tokens_per_second:12,.0f} tokens/s"
        f"  {result['chars'] / result['ours']:12,.0f} chars/s"
        f"  ({result['tokens']:.0f} tokens, {result['chars']:.0f} chars)"
    )
    print(f"  peer  {result['peer'] * 1000:8.1f} ms  (whole-text regex stripper, not streaming)")
    print(f"  ratio ours/peer: {result['ours'] / result['peer']:.1f}x the peer's time")
    headroom = tokens_per_second / FAST_LLM_TOKENS_PER_SECOND
    print(f"  headroom: {headroom:,.0f}x faster than a fast LLM writes (200 tokens/s)")


if __name__ == "__main__":
    main()
