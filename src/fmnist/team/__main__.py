"""``python -m fmnist.team <command>``: see ``fmnist.team``."""

import sys

from fmnist.team.cli import main

sys.exit(main())
