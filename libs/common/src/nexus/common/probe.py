"""The health probe of every image: `python -m nexus.common.probe`, for compose and Kubernetes.

    python -m nexus.common.probe grpc HOST:PORT [--service NAME] [--timeout S]
    python -m nexus.common.probe http URL [--bearer-env VAR] [--expect 200] [--timeout S]

`grpc` asks the gRPC health service (`grpc.health.v1.Health/Check`) of a service, for the whole
server or one named service; `http` requests a URL (the gateway's `/readyz`, or an authenticated
call whose API key it reads from the environment variable VAR, so the key never shows on a
command line). Exit status 0 when healthy (SERVING, or the expected HTTP status), 1 otherwise,
2 for a usage error; one line says why. It needs nothing beyond nexus.common's own dependencies,
so every image has it.
"""

from __future__ import annotations

import argparse
import os
import sys
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass

HEALTHY, UNHEALTHY, USAGE = 0, 1, 2


@dataclass(frozen=True)
class Outcome:
    """What a probe found: healthy or not, and the one line that says it."""

    healthy: bool
    message: str


class UsageError(Exception):
    """The probe was asked something it cannot check (a bad address, a missing variable)."""


def probe_grpc(address: str, service: str = "", timeout_s: float = 2.0) -> Outcome:
    """Asks the gRPC health service at `address` about `service` ("" is the whole server)."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    _check_address(address)
    subject = f"{address} ({service})" if service else address
    with grpc.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            reply = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout_s)
        except grpc.RpcError as err:
            code = err.code()
            reason = "unknown service" if code == grpc.StatusCode.NOT_FOUND else err.details()
            return Outcome(False, f"{subject}: {code.name}: {reason}")
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    return Outcome(reply.status == health_pb2.HealthCheckResponse.SERVING, f"{subject}: {status}")


def probe_http(url: str, bearer: str = "", expect: int = 200, timeout_s: float = 2.0) -> Outcome:
    """Requests `url` (GET, with `Authorization: Bearer <bearer>` when given); healthy when the
    answer has the status `expect`."""
    if not url.startswith(("http://", "https://")):
        raise UsageError(f"{url!r}: not an http:// or https:// URL")
    request = urllib.request.Request(url)
    if bearer:
        request.add_header("Authorization", f"Bearer {bearer}")
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as reply:
            status = reply.status
    except urllib.error.HTTPError as err:  # an answer all the same: 4xx, 5xx
        status = err.code
    except (urllib.error.URLError, OSError) as err:
        reason = getattr(err, "reason", err)
        return Outcome(False, f"{url}: unreachable: {reason}")
    if status != expect:
        return Outcome(False, f"{url}: HTTP {status}, expected {expect}")
    return Outcome(True, f"{url}: HTTP {status}")


def _check_address(address: str) -> None:
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise UsageError(f"{address!r}: not a HOST:PORT address")


def _bearer(variable: str | None) -> str:
    """The API key in the environment variable `variable` (none when no variable is named)."""
    if variable is None:
        return ""
    value = os.environ.get(variable, "")
    if not value:
        raise UsageError(f"--bearer-env {variable}: the variable is unset or empty")
    return value


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m nexus.common.probe", description=__doc__.splitlines()[0]
    )
    kinds = parser.add_subparsers(dest="kind", required=True)
    grpc_probe = kinds.add_parser("grpc", help="ask a gRPC health service")
    grpc_probe.add_argument("address", help="HOST:PORT of the service")
    grpc_probe.add_argument("--service", default="", help="a named service (default: server)")
    http_probe = kinds.add_parser("http", help="request a URL")
    http_probe.add_argument("url", help="the URL to GET, e.g. http://127.0.0.1:8080/readyz")
    http_probe.add_argument("--bearer-env", metavar="VAR", help="send the API key held in VAR")
    http_probe.add_argument("--expect", type=int, default=200, help="healthy status (200)")
    for sub in (grpc_probe, http_probe):
        sub.add_argument("--timeout", type=float, default=2.0, help="seconds (default 2)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Runs one probe; prints one line; returns the exit status."""
    parser = _parser()
    args = parser.parse_args(argv)
    if args.timeout <= 0:
        parser.error("--timeout must be positive")
    try:
        if args.kind == "grpc":
            outcome = probe_grpc(args.address, args.service, args.timeout)
        else:
            bearer = _bearer(args.bearer_env)
            outcome = probe_http(args.url, bearer, args.expect, args.timeout)
    except UsageError as err:
        print(f"probe: {err}", file=sys.stderr)
        return USAGE
    print(f"probe: {outcome.message}", file=sys.stdout if outcome.healthy else sys.stderr)
    return HEALTHY if outcome.healthy else UNHEALTHY


if __name__ == "__main__":
    sys.exit(main())
