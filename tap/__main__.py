"""`python -m tap …` is the `tap` command (for hosts where the console script is not on PATH)."""

import sys

from tap.runtime.cli import main

sys.exit(main())
