"""A one-line hint under a traceback a notebook user cannot read their way out of.

Fish's cookbook ends its async recipe with ``asyncio.run(main())``, which fails in a notebook
cell: the kernel's own event loop is already running there. In a cell, ``await main()`` does the
same job. ``%load_ext fish_notebook`` registers :func:`show_with_hint` as IPython's handler for
``RuntimeError``: the traceback shows as always, and that one error gets the hint below it.

Why not make ``asyncio.run`` work instead (``nest_asyncio``)? It patches asyncio for the whole
process, and on the kernel's loop it loses widget messages that arrive while the cell waits
(KERNEL.md: a click during the wait raised "cannot enter context ... is already entered").
"""

from __future__ import annotations

import weakref
from types import TracebackType
from typing import Any

__all__ = ["ASYNCIO_RUN_HINT", "install", "show_with_hint", "uninstall"]

ASYNCIO_RUN_HINT = (
    "Hint: a notebook cell already runs inside an event loop: write `await main()` "
    "instead of `asyncio.run(main())`."
)
_RUNNING_LOOP = "cannot be called from a running event loop"
_installed: weakref.WeakSet[Any] = weakref.WeakSet()  # shells where the hint is ours


def show_with_hint(
    shell: Any,
    etype: type[BaseException],
    value: BaseException,
    tb: TracebackType | None,
    tb_offset: int | None = None,
) -> Any:
    """IPython custom exception handler: the usual traceback, then the hint when it applies."""
    shell.showtraceback((etype, value, tb), tb_offset=tb_offset)
    if _RUNNING_LOOP in str(value):
        print(ASYNCIO_RUN_HINT)
    return None


def install(shell: Any) -> bool:
    """Register the hint unless the user has a custom exception handler of their own."""
    if shell.custom_exceptions:
        return False
    shell.set_custom_exc((RuntimeError,), show_with_hint)
    _installed.add(shell)
    return True


def uninstall(shell: Any) -> None:
    """Remove the hint again if this module installed it."""
    if shell in _installed:
        _installed.discard(shell)
        shell.set_custom_exc((), None)
