"""bgpvip as an ExaBGP 5 API process: command lines, the stdin/stdout session, the config.

I/O side of the line. `codec` turns routes into validated API lines and ExaBGP's lines into
values (pure functions); `session` speaks the pipe; `render` writes ExaBGP's configuration
and environment.
"""

from bgpvip.adapters.exabgp.codec import (
    ADJ_RIB_OUT_COMMAND,
    DEFAULT_BATCH_SIZE,
    NEIGHBORS_COMMAND,
    Ack,
    AdjRibOut,
    Eof,
    Event,
    Message,
    Negotiated,
    NeighborEvent,
    NeighborStatus,
    Notification,
    Shutdown,
    Unknown,
    canonical_attributes,
    canonical_route,
    encode_announce,
    encode_withdraw,
    is_api_event,
    neighbors_by_family,
    parse_adj_rib_out,
    parse_adj_rib_out_detailed,
    parse_line,
    parse_neighbors,
    validate_line,
)
from bgpvip.adapters.exabgp.render import BGP_PORT, PROCESS_NAME, exabgp_environment, render_config
from bgpvip.adapters.exabgp.session import ExaBgpClosed, ExaBgpError, ExaBgpSession, ExaBgpTimeout

__all__ = [
    "ADJ_RIB_OUT_COMMAND",
    "BGP_PORT",
    "DEFAULT_BATCH_SIZE",
    "NEIGHBORS_COMMAND",
    "PROCESS_NAME",
    "Ack",
    "AdjRibOut",
    "Eof",
    "Event",
    "ExaBgpClosed",
    "ExaBgpError",
    "ExaBgpSession",
    "ExaBgpTimeout",
    "Message",
    "Negotiated",
    "NeighborEvent",
    "NeighborStatus",
    "Notification",
    "Shutdown",
    "Unknown",
    "canonical_attributes",
    "canonical_route",
    "encode_announce",
    "encode_withdraw",
    "exabgp_environment",
    "is_api_event",
    "neighbors_by_family",
    "parse_adj_rib_out",
    "parse_adj_rib_out_detailed",
    "parse_line",
    "parse_neighbors",
    "render_config",
    "validate_line",
]
