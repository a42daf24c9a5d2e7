"""What this host must provide for a valid config to run: checked by `bgpvip check-config`
(unless `--no-files`), and the part `bgpvip run` needs by `bgpvip run` before ExaBGP starts.

I/O side. Each problem is a (config field, message) pair, like a validation error, so the
operator sees which setting to fix: a runtime directory that is a file, an ExaBGP executable
that is missing, a CA bundle that does not parse, a kubeconfig without its current context, a
ServiceAccount that is not mounted. Notes are things that are fine now but worth knowing (the
cluster CA of a kube-apiserver check before `kubeadm init` has written it).

The Kubernetes checks read the kubeconfig as YAML; they do not import the Kubernetes client.
They mirror what the client needs to build its configuration (the current context, its
cluster and user entries, and the files they name), not whether the credentials are accepted.
"""

from __future__ import annotations

import base64
import binascii
import os
import shutil
import stat
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from bgpvip.configfile import parse_yaml, referenced_file_problems
from bgpvip.core.config import Config, ConfigError, HttpCheck, KubeApiserverCheck
from bgpvip.core.text import quote
from bgpvip.files import KUBECONFIG_LIMIT, PEM_LIMIT, FileProblem, check_file, read_bounded
from bgpvip.tls import TlsFiles, TlsSetupError, build_context

Problem = tuple[str, str]

SERVICE_ACCOUNT_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")
"""Where a pod's ServiceAccount token and CA are mounted (what the in-cluster client reads)."""


def check_host(
    config: Config,
    *,
    environ: Mapping[str, str] | None = None,
    service_account: Path = SERVICE_ACCOUNT_DIR,
) -> tuple[list[Problem], list[Problem]]:
    """(problems, notes) about the files and programs `config` needs on this host."""
    problems = referenced_file_problems(config)
    tls, notes = tls_problems(config, skip={path for path, _ in problems})
    problems += tls
    problems += kubernetes_problems(
        config, environ=os.environ if environ is None else environ, service_account=service_account
    )
    problems += run_problems(config)
    return problems, notes


# --------------------------------------------------------------------------- bgpvip run


def find_exabgp(name: str) -> str:
    """The ExaBGP executable `bgpvip run` starts: `name` in PATH, else next to this Python."""
    found = shutil.which(name)
    if found:
        return found
    beside = Path(sys.executable).parent / name
    if os.path.isfile(beside) and os.access(beside, os.X_OK):
        return str(beside)
    raise FileNotFoundError(
        f"cannot find the ExaBGP executable {quote(name, 200)} in PATH or next to {sys.executable}"
    )


def run_problems(config: Config) -> list[Problem]:
    """What `bgpvip run` needs before it starts ExaBGP: its runtime directory and ExaBGP."""
    problems: list[Problem] = []
    if (err := _directory_problem(config.runtime_dir)) is not None:
        problems.append(("runtime_dir", err))
    try:
        find_exabgp(config.exabgp.executable)
    except FileNotFoundError as e:
        problems.append(("exabgp.executable", f"{e}; install ExaBGP 5 or set exabgp.executable"))
    return problems


def check_run(config: Config) -> None:
    if problems := run_problems(config):
        raise ConfigError(problems)


def _directory_problem(path: Path) -> str | None:
    """Why `path` cannot be used (or created) as a writable directory, or None."""
    try:
        st = os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        parent = path.parent
        while parent != parent.parent and not os.path.lexists(parent):
            parent = parent.parent
        try:
            pst = os.stat(parent)
        except OSError as e:
            return f"{path} cannot be created: {parent}: {e.strerror}"
        if not stat.S_ISDIR(pst.st_mode):
            return f"{path} cannot be created: {parent} is not a directory"
        if not os.access(parent, os.W_OK | os.X_OK):
            return f"{path} cannot be created: {parent} is not writable"
        return None
    except OSError as e:
        return f"{path}: {e.strerror}"
    if not stat.S_ISDIR(st.st_mode):
        return f"{path} exists and is not a directory"
    if not os.access(path, os.W_OK | os.X_OK):
        return f"{path} is not writable"
    return None


# --------------------------------------------------------------------------- TLS material


def tls_problems(
    config: Config, *, skip: frozenset[str] | set[str] = frozenset()
) -> tuple[list[Problem], list[Problem]]:
    """Load each HTTPS check's TLS material as its probe will. A kube-apiserver check's files
    may not exist yet (`kubeadm init` writes the CA): a note then, not a problem."""
    problems: list[Problem] = []
    notes: list[Problem] = []
    for i, vip in enumerate(config.vips):
        for j, check in enumerate(vip.checks):
            if isinstance(check, KubeApiserverCheck):
                http, optional = check.as_http(), True
            elif isinstance(check, HttpCheck):
                http, optional = check, False
            else:
                continue
            if not http.url.startswith("https://"):
                continue
            where = f"vips[{i}].checks[{j}]"
            files = TlsFiles(http.ca_file, http.client_cert, http.client_key, http.insecure)
            if any(f"{where}.{field}" in skip for field, _ in files.paths()):
                continue
            missing = [(field, p) for field, p in files.paths() if not os.path.lexists(p)]
            if optional and missing:
                notes.extend(
                    (f"{where}.{field}", f"{p} does not exist yet: the check fails until it does")
                    for field, p in missing
                )
                continue
            try:
                build_context(files)
            except TlsSetupError as e:
                problems.append((f"{where}.{e.field}", str(e)))
    return problems, notes


# --------------------------------------------------------------------------- Kubernetes


def kubernetes_problems(
    config: Config, *, environ: Mapping[str, str], service_account: Path = SERVICE_ACCOUNT_DIR
) -> list[Problem]:
    """Whether the Kubernetes client could be built: the kubeconfig, or the in-cluster
    environment when there is none. Only when `kubernetes.enabled`."""
    kube = config.kubernetes
    if not kube.enabled:
        return []
    if kube.kubeconfig is not None:
        return [("kubernetes.kubeconfig", p) for p in kubeconfig_problems(kube.kubeconfig)]
    return [
        ("kubernetes.kubeconfig", f"unset, so the in-cluster ServiceAccount is used, but {p}")
        for p in in_cluster_problems(environ, service_account)
    ]


def in_cluster_problems(environ: Mapping[str, str], service_account: Path) -> list[str]:
    """What the in-cluster client needs: the service environment variables a pod gets, and the
    mounted ServiceAccount token and CA."""
    problems: list[str] = []
    unset = [n for n in ("KUBERNETES_SERVICE_HOST", "KUBERNETES_SERVICE_PORT") if not environ.get(n)]
    if unset:
        are = "is" if len(unset) == 1 else "are"
        problems.append(f"{' and '.join(unset)} {are} not set (not in a pod? set kubernetes.kubeconfig)")
    for name in ("token", "ca.crt"):
        try:
            if not read_bounded(service_account / name, PEM_LIMIT).strip():
                problems.append(f"{service_account / name} is empty")
        except FileProblem as e:
            problems.append(f"{e} (automountServiceAccountToken: false?)")
    return problems


def kubeconfig_problems(path: Path) -> list[str]:
    """What keeps the Kubernetes client from building a configuration out of `path`."""
    if ":" in str(path):
        return [f"{path}: contains ':', which the Kubernetes client reads as a list of files"]
    try:
        text = read_bounded(path, KUBECONFIG_LIMIT).decode("utf-8")
    except FileProblem as e:
        return [f"kubeconfig {e}"]
    except UnicodeDecodeError:
        return [f"{path} is not UTF-8 text"]
    try:
        doc = parse_yaml(text, str(path))
    except ConfigError as e:
        return [m for _, m in e.problems]
    if not isinstance(doc, dict):
        return [f"{path} is not a kubeconfig (not a mapping)"]
    try:
        return [f"{path}: {p}" for p in _kubeconfig_entries(path, doc)]
    except _Invalid as e:
        return [f"{path}: {e}"]


class _Invalid(Exception):
    pass


def _named(doc: dict[Any, Any], kind: str, name: Any, item: str) -> dict[Any, Any]:
    entries = doc.get(kind)
    if not isinstance(entries, list):
        raise _Invalid(f"{kind} is not a list")
    found = [e for e in entries if isinstance(e, dict) and e.get("name") == name]
    if not found:
        raise _Invalid(f"{item} {quote(name)} is not in {kind}")
    if len(found) > 1:
        raise _Invalid(f"{item} {quote(name)} is in {kind} {len(found)} times")
    body = found[0].get(item)
    if body is None and item == "user":
        return {}
    if not isinstance(body, dict):
        raise _Invalid(f"{kind} entry {quote(name)} has no `{item}` mapping")
    return body


def _kubeconfig_entries(path: Path, doc: dict[Any, Any]) -> list[str]:
    current = doc.get("current-context")
    if not isinstance(current, str) or not current:
        raise _Invalid("has no current-context")
    context = _named(doc, "contexts", current, "context")
    cluster_name = context.get("cluster")
    if not isinstance(cluster_name, str) or not cluster_name:
        raise _Invalid(f"context {quote(current)} names no cluster")
    cluster = _named(doc, "clusters", cluster_name, "cluster")
    user = _named(doc, "users", context["user"], "user") if context.get("user") else {}
    problems: list[str] = []
    server = cluster.get("server")
    if not isinstance(server, str) or not server.startswith(("https://", "http://")):
        problems.append(f"cluster {quote(cluster_name)} has no https:// server")
    base = path.absolute().parent  # the client resolves relative file names against it
    for entry, key in (
        (cluster, "certificate-authority"),
        (user, "client-certificate"),
        (user, "client-key"),
        (user, "tokenFile"),
    ):
        value = entry.get(key)
        if value is None:
            continue
        if not isinstance(value, str):
            problems.append(f"{key} is not a file name")
        elif (err := check_file(base / value, PEM_LIMIT)) is not None:
            problems.append(f"{key}: {err}")
    for entry, key in (
        (cluster, "certificate-authority-data"),
        (user, "client-certificate-data"),
        (user, "client-key-data"),
    ):
        value = entry.get(key)
        if value is None:
            continue
        try:
            base64.b64decode(str(value), validate=True)
        except (binascii.Error, ValueError):
            problems.append(f"{key} is not base64")
    return problems
