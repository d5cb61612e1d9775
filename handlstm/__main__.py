"""``python -m handlstm``: the ``handlstm`` command (see :mod:`handlstm.cli`)."""

from .cli import main

raise SystemExit(main())
