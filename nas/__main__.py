"""``python -m nas``: the ``embnas`` command."""

from nas.app.cli import main

raise SystemExit(main())
