"""``python -m handlstm``: the ``handlstm`` command (see :mod:`handlstm.tools.cli`)."""

from .tools.cli import main

raise SystemExit(main())
