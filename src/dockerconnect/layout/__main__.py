"""``python -m dockerconnect.layout export …``: :func:`~dockerconnect.layout.export_main`."""

import sys

from dockerconnect.layout._cli import PROG, export_main

if len(sys.argv) < 2 or sys.argv[1] != "export":
    sys.stderr.write(f"usage: python -m dockerconnect.layout export ... (see {PROG} --help)\n")
    sys.exit(2)
sys.exit(export_main(sys.argv[2:]))
