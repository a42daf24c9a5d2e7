"""The `bgpvip` command line. Parses flags, builds objects, prints; decides nothing."""

from __future__ import annotations

import json
import os
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import click

from bgpvip import __version__

DEFAULT_CONFIG = "/etc/bgpvip/config.yaml"

config_option = click.option(
    "-c",
    "--config",
    "config_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=lambda: os.environ.get("BGPVIP_CONFIG", DEFAULT_CONFIG),
    show_default=f"$BGPVIP_CONFIG or {DEFAULT_CONFIG}",
    help="bgpvip configuration file (YAML).",
)


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="bgpvip")
def main() -> None:
    """Announce service addresses over BGP exactly while this host can serve them.

    bgpvip runs as ExaBGP's API process: ExaBGP speaks BGP to your routers, bgpvip decides
    which /32 and /128 routes to announce from health checks (and, in Kubernetes, from
    Services and EndpointSlices), and puts each address on an interface before announcing it.

    \b
    Typical use:
      bgpvip check-config -c /etc/bgpvip/config.yaml   validate, print OK or the errors
      bgpvip run -c /etc/bgpvip/config.yaml            start ExaBGP with bgpvip as its speaker
      bgpvip routes                                    what is announced from here, and why
      bgpvip drain / bgpvip undrain                    withdraw everything / announce again

    Docs: docs/ in the source tree (configuration reference, guides for kubeadm, FRR, BIRD 2,
    GoBGP and Yamaha RTX).
    """


@main.command("check-config")
@click.argument("file", required=False, type=click.Path(dir_okay=False, path_type=Path))
@config_option
@click.option(
    "--no-files",
    is_flag=True,
    help="Validate the file alone: do not check what it needs on this host (CA, client "
    "certificates, password files, the kubeconfig or in-cluster ServiceAccount, runtime_dir, "
    "the ExaBGP executable). For checking a config on another machine.",
)
def check_config(file: Path | None, config_path: Path, no_files: bool) -> None:
    """Validate a configuration file: print OK, or every error with the field it concerns.

    Exits 0 when the file is valid and 1 otherwise. Run it before starting ExaBGP
    (systemd ExecStartPre=, an init container): ExaBGP gives up on a helper that dies
    five times in about a minute.

    Besides the file itself it checks, on this host, what the config needs: referenced files
    exist, are regular files of sane size and load (CA bundles and client certificates as the
    probe loads them), the kubeconfig has its current context, cluster and user (or the
    in-cluster ServiceAccount is mounted), runtime_dir can be a directory, and the ExaBGP
    executable exists. A kube-apiserver check's CA or client certificate that does not exist
    yet is a note, not an error: `kubeadm init` writes the CA after bgpvip starts.
    """
    from bgpvip.configfile import load_file
    from bgpvip.core.config import ConfigError
    from bgpvip.core.text import clip

    path = file or config_path
    notes: list[tuple[str, str]] = []
    try:
        cfg = load_file(path, check_files=False)
        if not no_files:
            from bgpvip.preflight import check_host

            problems, notes = check_host(cfg)
            if problems:
                raise ConfigError(problems)
    except ConfigError as e:
        click.echo(f"{path}: invalid", err=True)
        for field, msg in e.problems:
            click.echo(f"  {field}: {msg}" if field else f"  {msg}", err=True)
        sys.exit(1)
    except Exception as e:  # never a traceback: a check that could not run is a failed check
        click.echo(f"{path}: cannot be checked: {type(e).__name__}: {clip(str(e), 200)}", err=True)
        sys.exit(1)
    click.echo(f"{path}: OK ({len(cfg.vips)} VIPs, {len(cfg.bgp.peers)} peers, {len(cfg.pools)} pools)")
    for field, msg in notes:
        click.echo(f"  note: {field}: {msg}")


@main.command("exabgp-config")
@config_option
@click.option(
    "--speaker-command",
    help="Override the API process command ExaBGP runs (default: this bgpvip's `speaker`).",
)
def exabgp_config(config_path: Path, speaker_command: str | None) -> None:
    """Print the complete ExaBGP configuration bgpvip would run with.

    Peers get explicit local-address, hold-time, address families and MD5 passwords (read
    from their files); the process section runs `bgpvip speaker` with the same config.
    """
    import shlex

    from bgpvip.configfile import load_file
    from bgpvip.core.config import ConfigError
    from bgpvip.launcher.prepare import render

    try:
        cfg = load_file(config_path)
        text = render(cfg, config_path, speaker=shlex.split(speaker_command) if speaker_command else None)
    except ConfigError as e:
        click.echo(f"{config_path}: invalid\n{e}", err=True)
        sys.exit(1)
    click.echo(text, nl=False)


@main.command()
@config_option
def run(config_path: Path) -> None:
    """Render the ExaBGP configuration and run ExaBGP with bgpvip as its API process.

    One command for systemd and containers. Stops in order on SIGTERM: withdraw every route,
    wait `shutdown_delay`, remove the addresses, then stop ExaBGP. Exits 2 before ExaBGP starts
    on an invalid config, or when runtime_dir or the ExaBGP executable is unusable (the same
    messages as `bgpvip check-config`).
    """
    from bgpvip.launcher.prepare import run_main

    sys.exit(run_main(config_path))


@main.command()
@config_option
def speaker(config_path: Path) -> None:
    """The ExaBGP API process (ExaBGP starts it; you normally do not).

    Reads ExaBGP's stdin continuously, writes validated API commands to stdout and logs to
    stderr. Put it in an ExaBGP `process` block if you run ExaBGP yourself.
    """
    from bgpvip.daemon import speaker_main

    sys.exit(speaker_main(config_path))


def _status_url(config_path: Path, url: str | None) -> str:
    if url:
        return url.rstrip("/")
    host, port = "127.0.0.1", 9474
    try:
        from bgpvip.configfile import load_file

        cfg = load_file(config_path, check_files=False)
        host, port = str(cfg.status.listen), cfg.status.port
        if host in ("0.0.0.0", "::"):
            host = "127.0.0.1"
    except Exception:
        pass
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{port}"


def _fetch_status(base: str) -> dict[str, Any]:
    try:
        with urllib.request.urlopen(f"{base}/status", timeout=5) as resp:
            data: dict[str, Any] = json.load(resp)
            return data
    except (urllib.error.URLError, OSError, ValueError) as e:
        raise click.ClickException(
            f"cannot reach the speaker's status endpoint at {base}/status ({e}).\n"
            "Is `bgpvip run` running with this config? (status.enabled, status.listen, status.port)"
        ) from None


def _age(ts: float | None) -> str:
    if not ts:
        return "-"
    s = max(0, int(time.time() - ts))
    if s < 120:
        return f"{s}s"
    if s < 7200:
        return f"{s // 60}m"
    if s < 172800:
        return f"{s // 3600}h"
    return f"{s // 86400}d"


def _attrs(a: dict[str, Any] | None) -> str:
    if not a:
        return "-"
    parts = []
    for key, label in (("med", "med"), ("local_preference", "lp"), ("as_path", "prepend")):
        if key in a:
            # the path holds the local AS once more than it is prepended: ExaBGP sends the
            # `as-path` attribute as the whole path (see core.config.route_attributes)
            value = len(a[key]) - 1 if key == "as_path" else a[key]
            parts.append(f"{label}={value}")
    if a.get("communities"):
        parts.append("comm=" + ",".join(a["communities"]))
    if a.get("large_communities"):
        parts.append("lcomm=" + ",".join(a["large_communities"]))
    return " ".join(parts) or "-"


def render_routes_table(status: dict[str, Any]) -> str:
    rows = [("PREFIX", "SOURCE", "ANNOUNCED", "REASON", "SINCE", "ATTRIBUTES", "DETAIL")]
    for d in status.get("decisions", []):
        reason, detail = d.get("reason", ""), d.get("detail", "")
        failure = d.get("failure")
        if failure:
            # the decision stands, but a step towards it failed: that is what the operator must see
            reason = failure.get("reason", "failed")
            detail = (
                f"{failure.get('step')} failed {failure.get('attempts')}x for {failure.get('for_seconds')}s: "
                f"{failure.get('error')}; wanted: {d.get('reason', '')}"
            )
        notes = []
        if d.get("address_not_owned"):
            notes.append(f"address on {d['address_not_owned']} is not bgpvip's (never removed by bgpvip)")
        if d.get("address_held_seconds") is not None:
            notes.append(f"address kept {d['address_held_seconds']}s more while routers converge")
        rows.append(
            (
                d.get("prefix") or d.get("address", "?"),
                d.get("source", ""),
                "yes" if d.get("announced") else "no",
                reason,
                _age(d.get("since")),
                _attrs(d.get("attributes")),
                "; ".join([*notes, detail] if detail else notes),
            )
        )
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(rows[0]) - 1)]
    lines = [
        "  ".join(str(c).ljust(w) for c, w in zip(r[:-1], widths, strict=True)) + "  " + str(r[-1])
        for r in rows
    ]
    head = f"node {status.get('node')}"
    if status.get("drained"):
        head += "  DRAINED (bgpvip undrain to announce again)"
    if status.get("stopping"):
        head += "  STOPPING"
    if status.get("config_error"):
        head += "\nconfig reload rejected, running the last good config:\n  " + str(status["config_error"])
    peers = ["", "PEER                 AS      STATE        SINCE"]
    for p in status.get("peers", []):
        since = p.get("since_seconds")
        peers.append(
            f"{p.get('name', '')[:20]:<20} {p.get('peer_as', '')!s:<7} {p.get('state', ''):<12} "
            f"{'-' if since is None else f'{int(since)}s'}" + (f"  {p['reason']}" if p.get("reason") else "")
        )
    return "\n".join([head, *lines, *peers]) + "\n"


@main.command()
@config_option
@click.option("-o", "--output", type=click.Choice(["table", "json"]), default="table", show_default=True)
@click.option("--status-url", help="Speaker status endpoint (default: from the config's `status` section).")
def routes(config_path: Path, output: str, status_url: str | None) -> None:
    """Show every configured address: announced or not, the reason, attributes, peers, since when.

    Reasons: healthy, degraded (announced with lower preference: a check with
    `on_failure: lower-preference` fails; the detail names it), checkFailing (with the last
    error), checkPending, drained, stopping, and for Services notInPool, noLocalEndpoints,
    noReadyEndpoints, nodeNotReady, ...
    A prefix whose step failed shows addressFailed, addressRemoveFailed, announceFailed or
    withdrawFailed instead, with the error and what was wanted; it is retried on its own.
    DETAIL also says when an address is kept while routers converge after a withdrawal, and
    when a VIP's address is on its interface but not bgpvip's (never removed by bgpvip).
    """
    status = _fetch_status(_status_url(config_path, status_url))
    if output == "json":
        click.echo(json.dumps(status, indent=2))
    else:
        click.echo(render_routes_table(status), nl=False)


def _drain_file(config_path: Path) -> Path:
    from bgpvip.configfile import load_file
    from bgpvip.core.config import ConfigError

    try:
        return load_file(config_path, check_files=False).drain_file
    except ConfigError as e:
        raise click.ClickException(f"{config_path}: {e}") from None


@main.command()
@config_option
@click.option("--reason", default="", help="Text written into the drain file (shown in `bgpvip routes`).")
def drain(config_path: Path, reason: str) -> None:
    """Withdraw every route from this host without stopping (creates the drain file).

    Addresses stay on their interfaces so established connections can finish. The drain
    survives restarts and reboots until `bgpvip undrain`.
    """
    path = _drain_file(config_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        f"drained at {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())} {reason}".rstrip() + "\n"
    )
    click.echo(f"drained: {path} created; the speaker withdraws within a fraction of a second")


@main.command()
@config_option
def undrain(config_path: Path) -> None:
    """Announce again: remove the drain file. Healthy VIPs come back at once."""
    path = _drain_file(config_path)
    try:
        path.unlink()
    except FileNotFoundError:
        click.echo(f"not drained ({path} does not exist)")
        return
    click.echo(f"undrained: {path} removed")


@main.command()
@config_option
@click.option(
    "--namespace",
    default=None,
    help="Namespace of the leader-election Lease. Default: the pod's own namespace (from its "
    "ServiceAccount), else bgpvip-system.",
)
@click.option(
    "--identity",
    default=None,
    help="This replica's name in the Lease. Default: $POD_NAME, else the host name. Must differ "
    "between replicas.",
)
@click.option("--lease-name", default="bgpvip-controller", show_default=True, help="Name of the Lease.")
@click.option(
    "--listen",
    default="127.0.0.1",
    show_default=True,
    help="Address for /healthz, /metrics and /status (unauthenticated, read-only). In a pod, use "
    "the pod IP so the kubelet's probes and Prometheus reach it.",
)
@click.option(
    "--port",
    default=9475,
    show_default=True,
    type=click.IntRange(0, 65535),
    help="Port for /healthz, /metrics, /status.",
)
@click.option(
    "--lease-duration",
    default=15.0,
    show_default=True,
    type=click.FloatRange(min=1.0),
    help="Seconds without a renewal after which another replica takes over.",
)
@click.option(
    "--renew-deadline",
    default=10.0,
    show_default=True,
    type=click.FloatRange(min=0.1),
    help="A leader that could not renew for this long stops writing (must be < --lease-duration).",
)
@click.option(
    "--renew-interval",
    default=5.0,
    show_default=True,
    type=click.FloatRange(min=0.1),
    help="Seconds between renewals (must be < --renew-deadline).",
)
@click.option(
    "--retry-period",
    default=2.0,
    show_default=True,
    type=click.FloatRange(min=0.1),
    help="Seconds between a follower's Lease checks and a leader's retries of a failed renewal.",
)
def controller(
    *,
    config_path: Path,
    namespace: str | None,
    identity: str | None,
    lease_name: str,
    listen: str,
    port: int,
    lease_duration: float,
    renew_deadline: float,
    renew_interval: float,
    retry_period: float,
) -> None:
    """Assign LoadBalancer IPs from the configured pools, as a cloud would.

    Watches every Service; each `type: LoadBalancer` Service of bgpvip's loadBalancerClass gets
    addresses from the pools in the config (the same file the speakers read), written to
    status.loadBalancer.ingress; the speakers then announce them. Run two replicas: a Lease
    (coordination.k8s.io) elects the one that writes, and the other takes over within the
    lease duration. Existing addresses never move on a takeover or restart: the allocations are
    rebuilt from the Services' statuses before anything new is assigned.

    \b
    Per Service (annotations):
      bgpvip.io/loadBalancerIPs: 203.0.113.10,2001:db8::10   ask for these addresses
      bgpvip.io/pool: NAME                                    allocate from this pool
      bgpvip.io/sharing-key: KEY                              share an address with others

    Refusals (pool exhausted, address taken, not in any pool, malformed annotation, ...) are
    Warning Events on the Service: `kubectl describe service NAME`. Needs RBAC for services
    (get, list, watch), services/status (update, patch), events (create, patch) and leases in
    its namespace; k8s/controller/ has it all. Guide: docs/loadbalancer-ips.md.
    """
    from bgpvip.controller import ControllerOptions, controller_main, default_identity, default_namespace

    try:
        options = ControllerOptions(
            identity=identity or default_identity(),
            namespace=namespace or default_namespace(),
            lease_name=lease_name,
            listen=listen,
            port=port,
            lease_duration=lease_duration,
            renew_deadline=renew_deadline,
            renew_interval=renew_interval,
            retry_period=retry_period,
        )
        if not 0 < renew_interval < renew_deadline < lease_duration or retry_period >= renew_deadline:
            raise ValueError(
                "need --renew-interval < --renew-deadline < --lease-duration and --retry-period < --renew-deadline"
            )
    except ValueError as e:
        raise click.UsageError(str(e)) from None
    sys.exit(controller_main(config_path, options, echo=lambda line: click.echo(line, err=True)))


if __name__ == "__main__":  # pragma: no cover
    main()
