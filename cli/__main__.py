"""``python -m cli`` runs the command line (the same as the installed ``traffic`` script)."""

import sys

from cli import main

sys.exit(main())
