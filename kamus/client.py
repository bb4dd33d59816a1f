"""The HTTP client of the ``kamus`` commands: to the encryptor (``encrypt``, ``seal``) and the
decryptor (``init``).

Built on ``http.client`` because certificate pinning must happen on the connection itself, after
the TLS handshake and before a single request byte is sent; higher-level clients offer no hook
there. Batch (v2) endpoints are used when the server has them, Kamus's v1 per value otherwise.
"""

import hashlib
import hmac
import http.client
import json
import os
import random
import re
import ssl
import time
from collections.abc import Callable, Mapping
from typing import Any, TypeVar
from urllib.parse import urlsplit

from kamus import __version__
from kamus.tokens import unverified_jwt_claims

T = TypeVar("T")


class ClientError(Exception):
    """A failure the commands report as one line on stderr, with a distinct exit code."""

    exit_code = 1


class UsageError(ClientError):
    exit_code = 2


class NetworkError(ClientError):
    exit_code = 3


class PinMismatch(ClientError):
    exit_code = 4


class ServerError(ClientError):
    exit_code = 5

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"the server answered {status}: {message}")
        self.status = status
        self.message = message


_HEX = re.compile(r"[0-9a-f]+")


def parse_fingerprint(text: str) -> tuple[str, bytes]:
    """A pinned certificate fingerprint: SHA-1 as Node prints it (kamus-cli's
    ``AB:CD:…``) or SHA-256, in hex with or without colons, any case."""
    digits = text.strip().lower().replace(":", "")
    if _HEX.fullmatch(digits) and len(digits) in (40, 64):
        return ("sha1" if len(digits) == 40 else "sha256"), bytes.fromhex(digits)
    raise UsageError(
        "--cert-fingerprint must be the certificate's SHA-1 or SHA-256 fingerprint in hex, "
        "e.g. from: openssl x509 -noout -fingerprint -sha256 -in cert.pem"
    )


def colon_hex(digest: bytes) -> str:
    return ":".join(f"{b:02X}" for b in digest)


class _PinnedHTTPSConnection(http.client.HTTPSConnection):
    pin: tuple[str, bytes] | None = None

    def connect(self) -> None:
        super().connect()
        if self.pin is None:
            return
        algorithm, expected = self.pin
        assert isinstance(self.sock, ssl.SSLSocket)
        der = self.sock.getpeercert(binary_form=True) or b""
        actual = hashlib.new(algorithm, der).digest()
        if not hmac.compare_digest(actual, expected):
            self.sock.close()
            raise PinMismatch(
                f"the server's certificate {algorithm.upper()} fingerprint is {colon_hex(actual)}, "
                f"not the pinned {colon_hex(expected)}; nothing was sent"
            )


class KamusClient:
    def __init__(
        self,
        url: str,
        *,
        allow_insecure: bool = False,
        fingerprint: str | None = None,
        ca_bundle: str | None = None,
        timeout: float = 30.0,
        token: str | None = None,
        allow_token_over_http: bool = False,
    ) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise UsageError(f"{url!r} is not an http(s) URL of a Kamus service")
        if token:
            token_transport_warning(url, allow_token_over_http)
        if parts.scheme == "http" and not allow_insecure:
            raise UsageError(
                f"refusing the plain-http URL {url}: secrets would cross the network in clear. "
                "Use https, or pass --allow-insecure-url"
            )
        if parts.scheme == "http" and fingerprint:
            raise UsageError("--cert-fingerprint needs an https URL")
        self._scheme = parts.scheme
        self._host = parts.hostname
        self._port = parts.port
        self._base = parts.path.rstrip("/")
        self._timeout = timeout
        self._pin = parse_fingerprint(fingerprint) if fingerprint else None
        self._context = ssl.create_default_context(cafile=ca_bundle) if ca_bundle else None
        self._connection: http.client.HTTPConnection | None = None
        # Learned from a 404: an original Kamus has no batch API; ask it only once.
        self.batch_api = True
        self._auth = {"Authorization": f"Bearer {token}"} if token else {}
        self.retry_after: str | None = None  # of the last answer

    def _connect(self) -> http.client.HTTPConnection:
        if self._connection is None:
            if self._scheme == "https":
                connection = _PinnedHTTPSConnection(
                    self._host, self._port, timeout=self._timeout, context=self._context
                )
                connection.pin = self._pin
                self._connection = connection
            else:
                self._connection = http.client.HTTPConnection(
                    self._host, self._port, timeout=self._timeout
                )
        return self._connection

    def close(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None

    def __enter__(self) -> "KamusClient":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def post(
        self, path: str, body: Mapping[str, Any], headers: Mapping[str, str] | None = None
    ) -> tuple[int, bytes]:
        """POST JSON; the status and the raw answer. Network failures raise NetworkError."""
        payload = json.dumps(body).encode("utf-8")
        all_headers = {
            "Content-Type": "application/json",
            "User-Agent": f"kamus-py/{__version__}",
            **self._auth,
            **(headers or {}),
        }
        for attempt in (1, 2):  # a kept-alive connection the server closed: reconnect once
            connection = self._connect()
            try:
                connection.request("POST", self._base + path, body=payload, headers=all_headers)
                response = connection.getresponse()
                self.retry_after = response.getheader("Retry-After")
                return response.status, response.read()
            except PinMismatch:
                self.close()
                raise
            except ssl.SSLCertVerificationError as exc:
                self.close()
                raise NetworkError(
                    f"the server's certificate is not trusted ({exc.verify_message}); pass "
                    "--ca-bundle with the CA that issued it"
                ) from None
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError):
                self.close()
                if attempt == 2:
                    raise NetworkError(f"{self.url} closed the connection") from None
            except (OSError, http.client.HTTPException) as exc:
                self.close()
                raise NetworkError(f"cannot reach {self.url}: {exc}") from None
        raise AssertionError("unreachable")

    @property
    def url(self) -> str:
        port = f":{self._port}" if self._port else ""
        return f"{self._scheme}://{self._host}{port}{self._base}"


def server_message(status: int, body: bytes) -> str:
    """What the server said was wrong: our ``{"detail"}``, or Kamus's text."""
    text = body.decode("utf-8", "replace").strip()
    try:
        detail = json.loads(text).get("detail")
        if isinstance(detail, str):
            return detail
    except (ValueError, AttributeError):
        pass
    return text[:300] or http.client.responses.get(status, "no message")


def with_retries(
    call: Callable[[], T],
    *,
    deadline: float,
    retryable: Callable[[Exception], bool],
    on_retry: Callable[[Exception, float], None] = lambda exc, wait: None,
) -> T:
    """Call until it succeeds, a non-retryable error, or the deadline (a ``time.monotonic``
    instant), with jittered exponential backoff between tries."""
    wait = 0.5
    while True:
        try:
            return call()
        except Exception as exc:
            remaining = deadline - time.monotonic()
            if not retryable(exc) or remaining <= 0:
                raise
            pause = min(random.uniform(0.5, 1.0) * wait, remaining)  # noqa: S311 - jitter
            on_retry(exc, pause)
            time.sleep(pause)
            wait = min(wait * 2, 8.0)


_HOW_TO_BIND = (
    "kubectl create token <sa> --audience kamus-encryptor > token, then --token-file token"
)
_AUDIENCE_ADVICE = (
    f"send a token bound to the encryptor's audience instead ({_HOW_TO_BIND}; the encryptor's "
    "Encryptor__Audiences must name that audience)"
)


def token_transport_warning(url: str, allow_token_over_http: bool) -> str | None:
    """Refuse to send a token to a plain-http URL, loopback included, unless explicitly allowed;
    then, the warning to print."""
    if urlsplit(url).scheme != "http":
        return None
    if not allow_token_over_http:
        raise UsageError(
            f"refusing to send your token to the plain-http URL {url}: it would cross the "
            "network in clear text, and whoever reads it could replay it against your cluster. "
            "Use an https URL. Through kubectl port-forward only, pass --allow-token-over-http "
            f"(and --allow-insecure-url), ideally with an audience-bound token: {_HOW_TO_BIND}"
        )
    return (
        f"sending your token to {url} in clear text (--allow-token-over-http). The flag exists "
        "for kubectl port-forward, whose tunnel to the cluster is encrypted: anywhere else, "
        "anyone on the path can copy the token and replay it"
    )


def read_token_file(path: str) -> str:
    """The token in a file (``--token-file``), surrounding whitespace removed."""
    try:
        with open(path, encoding="utf-8") as handle:
            token = handle.read().strip()
    except OSError as exc:
        raise UsageError(f"--token-file: cannot read {path} ({exc.strerror})") from None
    except UnicodeDecodeError:
        raise UsageError(f"--token-file: {path} is not a text token") from None
    if not token:
        raise UsageError(
            f"--token-file: {path} is empty; write a token into it, e.g. kubectl create token "
            "<sa> --audience kamus-encryptor"
        )
    return token


# What kube-apiserver answers to, by default: a token meant for it is a credential to the cluster.
_APISERVER_AUDIENCES = {
    "https://kubernetes.default.svc",
    "https://kubernetes.default.svc.cluster.local",
    "kubernetes.default.svc",
    "kubernetes.default.svc.cluster.local",
}


def token_audience_warning(token: str, apiserver: str | None = None) -> str | None:
    """Why sending this token is risky, or None when it is bound to audiences of its own.

    The JWT is decoded without verifying it (the encryptor's TokenReview does that): only its
    audiences are looked at, and they are the only claim ever printed. ``apiserver`` is the
    kubeconfig's cluster URL, when the token came from there."""
    claims = unverified_jwt_claims(token)
    if claims is None:
        return (
            "the token is not a JWT, so whether it is bound to an audience cannot be told; if it "
            "is your cluster credential, the encryptor could replay it against your cluster: "
            + _AUDIENCE_ADVICE
        )
    aud = claims.get("aud")
    audiences = [aud] if isinstance(aud, str) else aud if isinstance(aud, list) else []
    audiences = [a for a in audiences if isinstance(a, str) and a]
    if not audiences:
        return (
            "the token has no audience claim, so the apiserver accepts it too and the encryptor "
            "could replay it against your cluster: " + _AUDIENCE_ADVICE
        )
    issuer = claims.get("iss")
    apiservers = [*_APISERVER_AUDIENCES, apiserver, issuer if isinstance(issuer, str) else None]
    apiserver_audiences = {a.rstrip("/") for a in apiservers if a}
    # JSON-quoted: an audience is the token's text, and must not reach a terminal raw.
    theirs = [a for a in audiences if a.rstrip("/") in apiserver_audiences]
    if len(theirs) == len(audiences):
        return (
            f"the token's audiences {json.dumps(audiences)} are the apiserver's, so the "
            "encryptor could replay it against your cluster: " + _AUDIENCE_ADVICE
        )
    if theirs:  # one audience of its own is not enough: the apiserver accepts it as well
        return (
            f"the token's audiences {json.dumps(audiences)} include the apiserver's "
            f"{json.dumps(theirs)}, so the encryptor could replay it against your cluster: "
            + _AUDIENCE_ADVICE
        )
    return None


def kubeconfig_token(context: str | None = None) -> tuple[str, str]:
    """The bearer token kubectl would send for the kubeconfig's user (a token, or what its exec
    plugin such as ``aws eks get-token`` or ``gke-gcloud-auth-plugin`` prints), and the URL of
    the cluster it is for."""
    from kubernetes import client, config
    from kubernetes.config.config_exception import ConfigException

    configuration = client.Configuration()
    # Read KUBECONFIG now: the client's own default was read when it was first imported.
    path = os.environ.get("KUBECONFIG") or os.path.expanduser("~/.kube/config")
    try:
        config.load_kube_config(path, context=context, client_configuration=configuration)
    except (ConfigException, OSError) as exc:
        # The type only: a kubeconfig's errors can quote its contents.
        raise UsageError(
            f"--kubeconfig-token: cannot load the kubeconfig ({type(exc).__name__}); check "
            "KUBECONFIG or ~/.kube/config and --kube-context"
        ) from None
    # "Bearer <token>"; for a user with a password the client puts "Basic ..." here, which must
    # never be forwarded.
    header = configuration.api_key.get("BearerToken") or ""
    token = header.removeprefix("Bearer ").strip() if header.startswith("Bearer ") else ""
    if not token:
        raise UsageError(
            "--kubeconfig-token: the kubeconfig user has no bearer token (a client certificate or "
            "a password cannot be forwarded); use a token or an exec credential plugin"
        )
    return str(token), str(configuration.host)


# How long one encrypt call waits, in all, on the encryptor's rate limit before giving up.
RATE_LIMIT_PATIENCE = 120.0


def post_within_rate_limit(
    client: KamusClient, path: str, body: Mapping[str, Any]
) -> tuple[int, bytes]:
    """POST, waiting and retrying while the encryptor answers 429 with a Retry-After in seconds.

    The encryptor counts values: it admits a batch larger than its per-second limit when the
    client's budget is full, and the next batch must wait off that debt (kamus/ratelimit.py).
    """
    deadline = time.monotonic() + RATE_LIMIT_PATIENCE
    while True:
        status, answer = client.post(path, body)
        wait = client.retry_after
        if status != 429 or wait is None or not wait.isdigit():
            return status, answer
        if time.monotonic() + int(wait) > deadline:
            return status, answer  # the caller reports the server's "retry in ..."
        time.sleep(int(wait))


def encrypt_values(
    client: KamusClient, namespace: str, service_account: str, values: Mapping[str, str]
) -> dict[str, str]:
    """Encrypt values for one service account: one batch call, or v1 per value against a
    Kamus that has no batch API."""
    if client.batch_api:
        body = {"namespace": namespace, "serviceAccount": service_account, "items": dict(values)}
        status, answer = post_within_rate_limit(client, "/api/v2/encrypt", body)
        if status == 200:
            items = json.loads(answer)["items"]
            return {name: items[name]["data"] for name in values}
        if status not in (404, 405):
            raise ServerError(status, server_message(status, answer))
        client.batch_api = False
    result = {}
    for name, value in values.items():
        result[name] = encrypt_one(client, namespace, service_account, value)
    return result


def encrypt_one(client: KamusClient, namespace: str, service_account: str, value: str) -> str:
    body = {"data": value, "service-account": service_account, "namespace": namespace}
    status, answer = post_within_rate_limit(client, "/api/v1/encrypt", body)
    if status != 200:
        raise ServerError(status, server_message(status, answer))
    return answer.decode("utf-8")
