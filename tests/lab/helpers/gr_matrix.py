#!/usr/bin/env python3
"""The restart matrix: for each router setting and node setting, each planned or unplanned
event, was the VIP dropped at the router, how fast, and how many client connections failed.

    sudo .venv/bin/python tests/lab/helpers/gr_matrix.py --router frr --n 2
    sudo .venv/bin/python tests/lab/helpers/gr_matrix.py --router bird --n 2 --json out.json

Each (router, settings) pair gets a lab of its own (prefix `bvgm<pid>`), torn down at the end.
Figures go to docs/performance.md; the settings it recommends to docs/frr.md, docs/bird.md and
docs/bfd.md.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[2] / "lab"))
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parents[2]))

import grlab  # noqa: E402
import nslab  # noqa: E402

UNPLANNED = ("kill-helper", "stop-helper", "kill-exabgp", "stop-exabgp", "cut-link")
PLANNED = (
    "restart-close-then-admin-down",
    "restart-admin-down-then-close",
    "restart-close-only",
    "helper-restart-admin-down",
    "helper-restart-silent",
)
OBSERVE_UNPLANNED = 6.0
"""Seconds to watch after an unplanned event: past the hold time (3 s) with margin."""


def run_event(node: grlab.NodeStack, router: grlab.Router, lab: nslab.Lab, event: str) -> grlab.Outcome:
    node.wait_steady(router)
    with grlab.measuring(lab) as (watch, client):
        if event == "kill-helper":
            t = node.kill_helper()
            time.sleep(OBSERVE_UNPLANNED)
        elif event == "stop-helper":
            t = node.stop_helper()
            time.sleep(OBSERVE_UNPLANNED)
            node.cont_helper()
        elif event == "kill-exabgp":
            t = node.kill_exabgp()
            time.sleep(OBSERVE_UNPLANNED)
            node.reap()
            node.start()
        elif event == "stop-exabgp":
            t = node.stop_exabgp()
            time.sleep(OBSERVE_UNPLANNED)
            node.cont_exabgp()
        elif event == "cut-link":
            t = node.cut_link()
            time.sleep(OBSERVE_UNPLANNED)
            node.restore_link()
        elif event.startswith("restart-"):
            t = node.planned_restart(event.removeprefix("restart-"))
            node.wait_steady(router)
            time.sleep(1.0)
        elif event.startswith("helper-restart-"):
            t = node.helper_restart(event.removeprefix("helper-restart-"))
            time.sleep(OBSERVE_UNPLANNED)
        else:
            raise ValueError(event)
        gone = watch.gone_at(t)
        back = watch.back_at(t)
    eors = [e["wall"] - t for e in node.events() if e["event"] == "eor" and e["wall"] > t]
    outcome = grlab.Outcome(
        event=event,
        dropped=gone is not None,
        drop_after=None if gone is None else gone - t,
        back_after=None if back is None else back - t,
        failed=client.failed(t),
        total=client.total(t),
        eor_after=eors[0] if eors and event.startswith("restart-") else None,
    )
    node.wait_steady(router, timeout=60)
    return outcome


def run_setting(router_kind: str, setting: dict[str, Any], events: list[str], n: int) -> list[dict[str, Any]]:
    prefix = f"bvgm{os.getpid() % 1000}{abs(hash(json.dumps(setting, sort_keys=True))) % 100}-"
    if router_kind == "frr":
        config = grlab.frr_config(bfd=setting["bfd"], check_control_plane=setting.get("cpf", False))
        lab = nslab.Lab(nslab.DEFAULT_TOPOLOGY, prefix, bfd=setting["bfd"], router_config=config)
    else:
        lab = nslab.Lab(
            nslab.DEFAULT_TOPOLOGY,
            prefix,
            router_software="bird",
            router_config=grlab.bird_config(bfd=setting.get("bird_bfd", "on") if setting["bfd"] else "off"),
        )
    rows = []
    node = grlab.NodeStack(
        lab,
        grlab.NodeOptions(graceful_restart=setting["gr"], bfd=setting["bfd"], cbit=setting.get("cbit", 0)),
    )
    try:
        lab.up()
        node.prepare()
        node.start()
        router = grlab.Router(lab)
        for event, i in itertools.product(events, range(n)):
            try:
                out = run_event(node, router, lab, event)
                row = {"router": router_kind, **setting, "event": event, "i": i, **out.__dict__}
            except Exception as exc:  # one broken cell must not hide the others
                row = {"router": router_kind, **setting, "event": event, "i": i, "error": repr(exc)[:500]}
                node.terminate()
                node.start()
            print(json.dumps(row), flush=True)
            rows.append(row)
    finally:
        node.terminate()
        lab.down()
    return rows


def setting_label(row: dict[str, Any]) -> str:
    parts = ["GR" if row["gr"] else "no GR"]
    if row["router"] == "frr":
        parts.append("cpf" if row.get("cpf") else "no cpf")
    else:
        parts.append(f"bfd {row.get('bird_bfd', 'on')}")
    parts.append(f"C={row.get('cbit', 0)}")
    return ", ".join(parts)


def summarize(rows: list[dict[str, Any]]) -> str:
    """A Markdown table per router: one row per setting, one column per event; a cell says
    `kept` or the drop times (ms), then the failed client connections of every run."""
    out = []
    for router in sorted({r["router"] for r in rows}):
        mine = [r for r in rows if r["router"] == router]
        events = list(dict.fromkeys(r["event"] for r in mine))
        out.append(f"| {router} | " + " | ".join(events) + " |")
        out.append("|---" * (len(events) + 1) + "|")
        for label in dict.fromkeys(setting_label(r) for r in mine):
            cells = []
            for event in events:
                runs = [r for r in mine if setting_label(r) == label and r["event"] == event]
                if any("error" in r for r in runs) or not runs:
                    cells.append("error" if runs else "")
                    continue
                drops = [r["drop_after"] for r in runs if r["dropped"]]
                failed = "/".join(str(r["failed"]) for r in runs)
                if not drops:
                    cells.append(f"kept ({failed})")
                else:
                    times = ", ".join(f"{d * 1000:.0f}" for d in drops)
                    kept = len(runs) - len(drops)
                    cells.append(f"**{times}**" + (f" +{kept} kept" if kept else "") + f" ({failed})")
            out.append(f"| {label} | " + " | ".join(cells) + " |")
        out.append("")
    return "\n".join(out)


def main() -> int:
    # SIGTERM ends the run through the `finally` blocks, so every lab is torn down
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--router", choices=("frr", "bird"))
    parser.add_argument("--n", type=int, default=2)
    parser.add_argument("--events", default=",".join(UNPLANNED + PLANNED))
    parser.add_argument("--settings", help="JSON list of settings; default: the whole matrix for the router")
    parser.add_argument("--json", help="append every row to this file")
    parser.add_argument("--summarize", metavar="FILE", help="print the table of a --json file and exit")
    args = parser.parse_args()
    if args.summarize:
        print(summarize([json.loads(line) for line in Path(args.summarize).read_text().splitlines() if line]))
        return 0
    if args.settings:
        settings = json.loads(args.settings)
    elif args.router == "frr":
        settings = [
            {"gr": gr, "bfd": True, "cpf": cpf, "cbit": cbit}
            for gr in (False, True)
            for cpf in (False, True)
            for cbit in (0, 1)
        ]
    else:
        settings = [
            {"gr": gr, "bfd": True, "bird_bfd": mode, "cbit": 0}
            for gr in (False, True)
            for mode in ("on", "graceful")
        ]
    if args.router is None:
        parser.error("--router is required")
    rows = []
    for setting in settings:
        rows += run_setting(args.router, setting, args.events.split(","), args.n)
    if args.json:
        with open(args.json, "a") as f:
            for row in rows:
                f.write(json.dumps(row) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
