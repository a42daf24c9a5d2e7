"""`python -m bgpvip.speaker --config FILE`: the speaker as `bgpvip run` has ExaBGP start it.

The same process as `bgpvip speaker` (bgpvip/daemon.py's `speaker_main`), without the CLI:
the command-line framework and the status client it brings are not imported, which leaves
1.2 MB of resident memory and ~20 ms of start-up out of every speaker. `bgpvip speaker`
stays the documented command for people who run ExaBGP themselves.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import NoReturn


def main(argv: Sequence[str] | None = None) -> NoReturn:
    parser = argparse.ArgumentParser(
        prog="python -m bgpvip.speaker",
        description="bgpvip's ExaBGP API process (what `bgpvip run` has ExaBGP start). "
        "Reads ExaBGP's stdin, writes API commands to stdout, logs to stderr.",
    )
    parser.add_argument("--config", required=True, metavar="FILE", help="bgpvip's configuration file")
    args = parser.parse_args(argv)

    from bgpvip.daemon import speaker_main

    speaker_main(args.config)


if __name__ == "__main__":
    main()
