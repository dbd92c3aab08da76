"""``python -m dockerconnect serve ...``: the same as the ``dockerconnect`` console script."""

from dockerconnect._cli import main

raise SystemExit(main())
