"""`python -m bgpvip.launcher`: the supervisor `bgpvip run` becomes (bgpvip/launcher/supervisor.py)."""

import sys

from bgpvip.launcher.supervisor import main

sys.exit(main())
