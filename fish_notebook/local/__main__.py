"""``python -m fish_notebook.local``: see :mod:`fish_notebook.local.cli`."""

from __future__ import annotations

import sys

from .cli import serve_main

if __name__ == "__main__":
    sys.exit(serve_main())
