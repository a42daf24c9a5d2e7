"""`python -m bgpvip.adapters.kube.resolve [--kubeconfig PATH]`: print the API connection as JSON.

I/O side; runs in a short-lived child process (see bgpvip.adapters.kube.connection). The
official client's loaders do the work: `KubeConfigLoader` for a kubeconfig (current context,
exec plugins, OIDC, embedded or referenced certificates, `insecure-skip-tls-verify`) and
`load_incluster_config` for the ServiceAccount (KUBERNETES_SERVICE_HOST/PORT, the token and CA
files). On failure: one line on stderr naming the problem, exit status 1.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

import msgspec


def _read(path: Any) -> str | None:
    return Path(path).read_text() if path else None


def resolve(kubeconfig: str | None) -> dict[str, Any]:
    import yaml
    from kubernetes.client import Configuration
    from kubernetes.config import incluster_config, kube_config

    cfg = Configuration()
    expires = None
    if kubeconfig is not None:
        with open(kubeconfig, encoding="utf-8") as f:
            doc = yaml.safe_load(f)
        if not isinstance(doc, dict):
            raise ValueError(f"{kubeconfig} is not a kubeconfig (not a YAML mapping)")
        loader = kube_config.KubeConfigLoader(  # type: ignore[no-untyped-call]
            config_dict=doc, config_base_path=os.path.dirname(os.path.abspath(kubeconfig))
        )
        loader.load_and_set(cfg)  # type: ignore[no-untyped-call]
        expiry = getattr(loader, "expiry", None)  # set by exec plugins, OIDC and gcp providers
        expires = expiry.timestamp() if expiry is not None else None
        source = f"kubeconfig {kubeconfig} (context {loader.current_context['name']})"
        token_file = None
    else:
        incluster_config.load_incluster_config(client_configuration=cfg)  # type: ignore[no-untyped-call]
        source = "in-cluster ServiceAccount"
        token_file = incluster_config.SERVICE_TOKEN_FILENAME
    # "BearerToken" in current clients, "authorization" in older ones
    token = next(
        (v for k, v in (cfg.api_key or {}).items() if k in ("BearerToken", "authorization") and v), ""
    )
    if token.lower().startswith("bearer "):
        token = token[7:]
    return {
        "server": cfg.host,
        "source": source,
        "ca": _read(cfg.ssl_ca_cert),
        "verify": bool(cfg.verify_ssl),
        "tls_server_name": getattr(cfg, "tls_server_name", None) or None,
        "client_cert": _read(cfg.cert_file),
        "client_key": _read(cfg.key_file),
        "token": token.strip() or None,
        "token_file": token_file,
        "expires": expires,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kubeconfig", help="kubeconfig file; without it, the in-cluster ServiceAccount")
    args = parser.parse_args(argv)
    try:
        out = resolve(args.kubeconfig)
    except Exception as e:
        where = f"kubeconfig {args.kubeconfig}" if args.kubeconfig else "in-cluster configuration"
        detail = " ".join(str(e).split()) or type(e).__name__
        print(f"{where}: {type(e).__name__}: {detail}", file=sys.stderr)
        return 1
    sys.stdout.buffer.write(msgspec.json.encode(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
