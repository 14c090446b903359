"""``python -m timm_deit_distill SUBCOMMAND ...``: the `deit-distill` command line."""

import sys

from .commands.cli import main

sys.exit(main())
