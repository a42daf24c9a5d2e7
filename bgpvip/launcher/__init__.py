"""`bgpvip run`: the launcher that renders ExaBGP's configuration, starts ExaBGP with the
speaker as its API process, and stops both in order."""
