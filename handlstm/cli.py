"""The ``handlstm`` command's public path (the implementation is :mod:`handlstm.tools.cli`)."""

from __future__ import annotations

from .tools.cli import main

__all__ = ["main"]

if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
