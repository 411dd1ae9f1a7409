import sys

from atrous.cli.main import main

sys.exit(main())
