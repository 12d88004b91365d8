"""``python -m shadowproxy.report report|verdict ...``: the subcommands without the main CLI."""

import sys

from shadowproxy.report.cli import main

sys.exit(main())
