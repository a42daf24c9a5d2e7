"""Names of the files `bgpvip run` and the speaker share in the runtime directory.

A module of its own so that `bgpvip run` does not import the speaker (and with it the
Kubernetes client) just for two names: that import cost 0.3 s before ExaBGP could start and
about 30 MB in the supervisor process.
"""

STOP_MARKER = "stopping"
"""Present while `bgpvip run` stops: a speaker ExaBGP respawns then must not announce."""
PID_FILE = "speaker.pid"
"""The speaker's process id, for `bgpvip run` to signal it first."""
