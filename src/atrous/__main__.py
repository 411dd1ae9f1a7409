"""``python -m atrous ...``: the same as the ``atrous`` command."""

import sys

from atrous.cli.main import main

if __name__ == "__main__":
    sys.exit(main())
