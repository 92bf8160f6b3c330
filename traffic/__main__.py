"""``python -m traffic`` runs the command line."""

import sys

from traffic.cli import main

sys.exit(main())
