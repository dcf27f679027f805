"""``python -m hylex`` = the ``hylex`` command."""
import sys

from hylex.cli import main

sys.exit(main())
