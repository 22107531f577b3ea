"""``python -m llenergymeasure_harness`` (see :mod:`llenergymeasure_harness.cli`)."""

import sys

from llenergymeasure_harness.cli import main

if __name__ == "__main__":
    sys.exit(main())
