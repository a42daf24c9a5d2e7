"""bgpvip: announce service addresses over BGP exactly while this host can serve them."""

__version__ = "0.1.0"
