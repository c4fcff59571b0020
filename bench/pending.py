"""A hook for a row that waits on parts still being built. It is not in the table (nor in
``ALL_ROWS``) until it measures something real; its docstring says what it needs and how it
would be wired in. (Socket reuse, once here, is row 2f: ``reuse.py``; the word error rate
guard is row 11: ``wer.py``.)
"""

from __future__ import annotations

from .common import Row

# --- first sound in the page -------------------------------------------------------------------


def page_first_sound_row() -> Row:
    """First sound in the browser: ``%speak``'s player against the SDK's notebook recipe.

    Ours: a cell ``%speak`` of the paced ten-sentence answer in JupyterLab in Chromium; the
    clock from the page's execute of the cell to the player scheduling its first buffer on
    the AudioContext. Peer: a cell ``play(client.tts.stream_websocket(tokens), notebook=True)``
    (the Fish SDK's recipe; it joins the whole stream before ``display(Audio(...,
    autoplay=True))``), the clock to the ``<audio>`` element's ``playing`` event. Same page,
    same kernel, same server, interleaved; both on the page's ``performance.now()``.
    Suggested goal <= 0.2x, as row 3 (which stops at the kernel side).

    Needs: (1) the browser harness of ``tests/browser`` (``Lab``, ``NotebookPage``) usable
    outside pytest (today it is fixtures in ``tests/browser/conftest.py``), (2) a page-side
    time of the first scheduled start in the player's published stats (``data-stats`` has
    per-chunk latencies, not an absolute first-start time on the page clock), (3) the cell's
    execute time on that clock (JupyterLab's ``executionScheduled`` signal, read by an init
    script), and Chromium's autoplay allowed (``--autoplay-policy=no-user-gesture-required``)
    so the ``<audio>`` element starts on its own. Wire-in: next to row 8.
    """
    raise NotImplementedError(
        "page_first_sound_row needs the browser harness outside pytest and page-clock "
        "timestamps of the first start (see its docstring)"
    )
