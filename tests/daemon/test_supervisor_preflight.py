"""`bgpvip run`'s check of the ports ExaBGP must listen on: ExaBGP refuses to start when one is
taken, and says so only in its own log."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from ipaddress import ip_address
from typing import Any

import pytest

from bgpvip.core.config import Config, ConfigError, load
from bgpvip.launcher.prepare import listening_peers

PEER = ip_address("127.0.0.2")
LOCAL = {PEER: ip_address("127.0.0.1")}


def config(**peer: Any) -> Config:
    return load(
        {
            "bgp": {
                "local_as": 65100,
                "peers": [{"address": str(PEER), "peer_as": 65000, "local_address": "127.0.0.1", **peer}],
            }
        }
    )


def test_a_passive_peer_whose_port_is_taken_is_refused_with_the_field() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(ConfigError) as e:
            listening_peers(config(passive=True, port=port), LOCAL)
    ((field, message),) = e.value.problems
    assert field == "bgp.peers[0].passive"
    assert (
        message == f"port {port} on 127.0.0.1 is in use by another program (another BGP daemon on this host?)"
    )


def test_passive_and_listen_false_peers_are_not_listening_peers() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    assert listening_peers(config(passive=True, port=port), LOCAL) == set()  # passive renders `listen` itself
    assert listening_peers(config(listen=False), LOCAL) == set()


def test_listen_takes_auto_true_and_false() -> None:
    assert config().bgp.peers[0].listen == "auto"
    assert config(listen=True).bgp.peers[0].listen is True
    assert config(listen="auto").bgp.peers[0].listen == "auto"
    with pytest.raises(ConfigError, match="listen"):
        config(listen="sometimes")


# In a network namespace of its own (lo only), so nothing else on the machine is in the way:
# prints what listening_peers answers for `listen: <argv[1]>`, free port first, then with
# 0.0.0.0:179 held as BIRD or FRR would hold it.
SCRIPT = """
import json, socket, sys
from ipaddress import ip_address
from bgpvip.core.config import ConfigError, load
from bgpvip.launcher.prepare import listening_peers
listen = json.loads(sys.argv[1])
config = load({"bgp": {"local_as": 65100, "peers": [
    {"address": "127.0.0.2", "peer_as": 65000, "local_address": "127.0.0.1", "listen": listen}]}})
local = {ip_address("127.0.0.2"): ip_address("127.0.0.1")}
def ask():
    try:
        return sorted(map(str, listening_peers(config, local)))
    except ConfigError as e:
        return e.problems
free = ask()
bird = socket.socket()
bird.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
bird.bind(("0.0.0.0", 179))
bird.listen()
print(json.dumps([free, ask()]))
"""


def in_own_netns(listen: object) -> tuple[Any, Any]:
    shell = 'ip link set lo up && exec "$0" -c "$1" "$2"'
    out = subprocess.run(
        ["unshare", "--net", "sh", "-c", shell, sys.executable, SCRIPT, json.dumps(listen)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    free, taken = json.loads(out.stdout)
    return free, taken


needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="port 179 in a network namespace: needs root")


@needs_root
def test_listen_true_refuses_to_start_when_another_daemon_holds_179() -> None:
    free, taken = in_own_netns(True)
    assert free == ["127.0.0.2"]
    assert taken == [
        [
            "bgp.peers[0].listen",
            "port 179 on 127.0.0.1 is in use by another program (another BGP daemon on this host?); "
            "or set listen: false (or auto)",
        ]
    ]


@needs_root
def test_listen_auto_connects_out_only_when_another_daemon_holds_179() -> None:
    assert in_own_netns("auto") == (["127.0.0.2"], [])
