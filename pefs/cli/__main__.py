"""``python -m pefs.cli``: the ``pefs`` command."""

from pefs.cli.main import main

raise SystemExit(main())
