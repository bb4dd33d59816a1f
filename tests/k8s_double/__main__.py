"""Run the Kubernetes API double on its own: ``python -m tests.k8s_double --help``."""

import argparse
import threading
from pathlib import Path

from tests.k8s_double.server import KubeApiDouble


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, default=6443)
    parser.add_argument("--kubeconfig", type=Path, default=Path("double.kubeconfig"))
    parser.add_argument(
        "--plain-http",
        action="store_true",
        help="serve plain HTTP without caller authentication, like `kubectl proxy`",
    )
    args = parser.parse_args()
    double = KubeApiDouble(
        listen_port=args.port, tls=not args.plain_http, require_auth=not args.plain_http
    )
    double.start()
    double.write_kubeconfig(args.kubeconfig)
    token = double.issue_token("default", "demo")
    print(
        f"Kubernetes API double at {double.url}\n"
        f"  kubeconfig: {args.kubeconfig} (export KUBECONFIG={args.kubeconfig.resolve()})\n"
        f"  a token for system:serviceaccount:default:demo:\n  {token}\n"
        f"  more: curl -sk -X POST {double.url}/_double/tokens "
        """-d '{"namespace": "ns", "serviceAccount": "sa"}'\n"""
        "Ctrl-C stops it.",
        flush=True,
    )
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        double.stop()


if __name__ == "__main__":
    main()
