"""``python -m molgym`` runs the command line."""

import sys

from molgym.cli import main

sys.exit(main())
