"""``python -m gateway``: the same command line as the ``battery-gateway`` console script."""

import sys

from .app.cli import main

if __name__ == "__main__":
    sys.exit(main())
