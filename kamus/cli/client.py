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
import socket
import ssl
import time
from collections.abc import Callable, Mapping
from typing import Any, Literal, TypeVar
from urllib.parse import urlsplit

from kamus import __version__
from kamus.server.tokens import unverified_jwt_claims

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


class WrongService(ClientError):
    """The URL answers, but not with the API of the Kamus service it was given as."""

    exit_code = 5  # as the 404 it is reported instead of


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


# -- why a connection failed ------------------------------------------------------------------

FailureKind = Literal[
    "not-tls",
    "wrong-host",
    "expired",
    "untrusted",
    "tls",
    "unknown-host",
    "refused",
    "timeout",
    "closed",
    "not-http",
    "other",
]

# What OpenSSL reports when the other end does not speak TLS: an HTTP server answers the
# ClientHello with "HTTP/1.1 400" (a wrong version, or a record layer failure), or hangs up.
_NOT_TLS_REASONS = frozenset(
    {"WRONG_VERSION_NUMBER", "RECORD_LAYER_FAILURE", "UNEXPECTED_EOF_WHILE_READING"}
)
# nginx's answer on its https port (an ingress's 443) to a plain-http request
_PLAIN_TO_TLS_PORT = b"The plain HTTP request was sent to HTTPS port"
_VERIFY_KINDS: dict[int, FailureKind] = {
    9: "expired",  # X509_V_ERR_CERT_NOT_YET_VALID
    10: "expired",  # X509_V_ERR_CERT_HAS_EXPIRED
    62: "wrong-host",  # X509_V_ERR_HOSTNAME_MISMATCH
    64: "wrong-host",  # X509_V_ERR_IP_ADDRESS_MISMATCH
}


def failure_kind(exc: BaseException) -> FailureKind:
    """What went wrong, from the socket, TLS or HTTP error a client raised (unwrapped)."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return _VERIFY_KINDS.get(exc.verify_code, "untrusted")
    if isinstance(exc, ssl.SSLError):
        return "not-tls" if exc.reason in _NOT_TLS_REASONS else "tls"
    if isinstance(exc, socket.gaierror):
        return "unknown-host"
    if isinstance(exc, TimeoutError):
        return "timeout"
    if isinstance(exc, ConnectionRefusedError):
        return "refused"
    # RemoteDisconnected is a BadStatusLine too: it is a close, the other a garbled answer.
    if isinstance(exc, ConnectionResetError | BrokenPipeError | ConnectionAbortedError):
        return "closed"
    if isinstance(exc, http.client.BadStatusLine):
        return "not-http"
    return "other"


def failure_reason(exc: BaseException) -> str:
    """The library's own words for ``exc``, short: never a request's content."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return str(exc.verify_message).rstrip(".")
    if isinstance(exc, ssl.SSLError) and exc.reason:
        return str(exc.reason)
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__


# Each: what happened. What to try. Fields: see KamusClient._network_error.
_NETWORK_MESSAGES: dict[FailureKind | Literal["speaks-tls"], str] = {
    "not-tls": "{url} does not speak TLS on this port ({reason}). Is it plain http? Then use "
    "{http_url}{insecure_flag} (secrets then cross the network in clear: through kubectl "
    "port-forward only)",
    "speaks-tls": "{url} speaks TLS on this port: it is an https server. Use {https_url}",
    "wrong-host": "the server's certificate is not valid for {host} ({reason}). Use a host name "
    "the certificate was issued for in --kamus-url, or have it reissued with {host} among its "
    "names",
    "expired": "the server's certificate is not valid now ({reason}). Have it renewed, or "
    "check this machine's clock",
    "untrusted": "the server's certificate is not trusted ({reason}). Pass --ca-bundle with the "
    "CA that issued it",
    "tls": "the TLS connection to {url} failed ({reason}). Check that the URL's port is the "
    "service's https port, and that it does not require client certificates",
    "unknown-host": "cannot reach {url}: the host {host} is not known ({reason}). Check the "
    "URL's host name, and that this machine's DNS resolves it",
    "refused": "cannot reach {url}: nothing listens on {address} (connection refused). Check "
    "that the service is running and the port is right (with kubectl port-forward, that it is "
    "still running, on that local port)",
    "timeout": "no answer from {url} within {timeout:g} s. Is a firewall dropping the packets, "
    "or the server overloaded? Check the host and port, then try again (--timeout waits "
    "longer)",
    "closed": "{url} closed the connection without answering. Check that the URL's port is "
    "the Kamus service's, and the service's log",
    "not-http": "{url} answered something that is not HTTP. Check the URL's scheme and port",
    "other": "cannot reach {url} ({reason}). Check the URL, and that no firewall or proxy "
    "stands in the way",
}


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
            address = f"{self.host}:{self.port}"
            raise PinMismatch(
                f"the server's certificate {algorithm.upper()} fingerprint is {colon_hex(actual)}, "
                f"not the pinned {colon_hex(expected)}; nothing was sent. If the certificate was "
                "renewed, check the new one and pin it (openssl s_client -connect "
                f"{address} -servername {self.host} </dev/null | openssl x509 -noout "
                "-fingerprint -sha256); if not, something between here and the server may be "
                "intercepting the connection"
            )


class KamusClient:
    def __init__(
        self,
        url: str,
        *,
        allow_insecure: bool = False,
        fingerprint: str | None = None,
        ca_bundle: str | None = None,
        ca_data: str | None = None,
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
        self._allow_insecure = allow_insecure
        self._base = parts.path.rstrip("/")
        self._timeout = timeout
        self._pin = parse_fingerprint(fingerprint) if fingerprint else None
        self._context = None
        if ca_bundle or ca_data:
            try:
                self._context = ssl.create_default_context(cafile=ca_bundle, cadata=ca_data)
            except (ssl.SSLError, ValueError):
                # The file is checked to exist by the option; what is wrong is its content.
                raise UsageError(
                    "the CA certificates given (--ca-bundle or $KAMUS_CA_CERT) are not PEM "
                    "certificates"
                ) from None
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
        self,
        path: str,
        body: Mapping[str, Any],
        headers: Mapping[str, str] | None = None,
        *,
        credentials: bool = True,
    ) -> tuple[int, bytes]:
        """POST JSON; the status and the raw answer. Network failures raise NetworkError."""
        payload = json.dumps(body).encode("utf-8")
        all_headers = {
            "Content-Type": "application/json",
            **(self._auth if credentials else {}),
            **(headers or {}),
        }
        return self._send("POST", path, payload, all_headers)

    def get(self, path: str, *, max_bytes: int | None = None) -> tuple[int, bytes]:
        """GET without credentials (a public resource); the status and at most ``max_bytes``
        (+1, so that the caller can tell an answer that is too long) of the answer."""
        return self._send("GET", path, None, {"Accept": "application/json"}, max_bytes)

    def _send(
        self,
        method: str,
        path: str,
        payload: bytes | None,
        headers: Mapping[str, str],
        max_bytes: int | None = None,
    ) -> tuple[int, bytes]:
        all_headers = {"User-Agent": f"kamus-py/{__version__}", **headers}
        for attempt in (1, 2):
            connection = self._connect()
            try:
                connection.request(method, self._base + path, body=payload, headers=all_headers)
                response = connection.getresponse()
                self.retry_after = response.getheader("Retry-After")
                status = response.status
                answer = response.read() if max_bytes is None else response.read(max_bytes + 1)
                if max_bytes is not None and not response.isclosed():
                    self.close()  # the rest of an over-long answer is not read
            except PinMismatch:
                self.close()
                raise
            except (OSError, http.client.HTTPException) as exc:
                self.close()
                kind = failure_kind(exc)
                if kind == "closed" and attempt == 1:
                    continue  # a kept-alive connection the server closed: reconnect once
                raise self._network_error(kind, exc) from None
            if self._scheme == "http" and status == 400 and _PLAIN_TO_TLS_PORT in answer:
                self.close()
                raise self._network_error("speaks-tls", None)
            return status, answer
        raise AssertionError("unreachable")

    def _network_error(
        self, kind: FailureKind | Literal["speaks-tls"], exc: BaseException | None
    ) -> NetworkError:
        """Two sentences, what happened and what to try, from ``_NETWORK_MESSAGES``."""
        if self._scheme == "http" and kind in ("closed", "not-http") and self._speaks_tls():
            kind = "speaks-tls"
        port = self._port or (443 if self._scheme == "https" else 80)
        host = f"[{self._host}]" if ":" in self._host else self._host
        return NetworkError(
            _NETWORK_MESSAGES[kind].format(
                url=self.url,
                host=self._host,
                address=f"{host}:{port}",
                reason=failure_reason(exc) if exc else "",
                timeout=self._timeout,
                http_url=f"http://{host}:{port}{self._base}",
                https_url=f"https://{host}:{port}{self._base}",
                insecure_flag="" if self._allow_insecure else " with --allow-insecure-url",
            )
        )

    def _speaks_tls(self) -> bool:
        """Whether this plain-http URL's port answers a TLS handshake: asked only once a request
        failed, to tell a wrong scheme from a broken server. Only a handshake is sent."""
        context = ssl.create_default_context()
        # Any certificate at all shows the port speaks TLS; none is trusted with anything.
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        try:
            with (
                socket.create_connection((self._host, self._port or 80), self._timeout) as raw,
                context.wrap_socket(raw, server_hostname=self._host),
            ):
                return True
        except ssl.SSLError as exc:  # an alert is TLS too (a client certificate required...)
            return exc.reason not in _NOT_TLS_REASONS
        except OSError:
            return False

    @property
    def url(self) -> str:
        host = f"[{self._host}]" if ":" in self._host else self._host
        port = f":{self._port}" if self._port else ""
        return f"{self._scheme}://{host}{port}{self._base}"


# The v1 API path of each Kamus service: every Kamus and kamus-py version has it.
_V1_PATHS = {"encryptor": "/api/v1/encrypt", "decryptor": "/api/v1/decrypt"}


def wrong_service(client: KamusClient, expected: Literal["encryptor", "decryptor"]) -> WrongService:
    """The error for a URL given as the Kamus ``expected`` service that answered 404 on its v1
    API. One more request, without credentials or data, asks the other service's API, to tell
    the other Kamus service from something else; it is made only here, on the failure path."""
    other: Literal["encryptor", "decryptor"] = (
        "decryptor" if expected == "encryptor" else "encryptor"
    )
    try:
        status, _ = client.post(_V1_PATHS[other], {}, credentials=False)
    except ClientError:
        status = 404  # cannot be told: say what is sure
    looks = (
        f"it answers on {_V1_PATHS[other]}, so it looks like the Kamus {other}"
        if status not in (404, 405)
        else f"it is not a Kamus {expected}"
    )
    verb = _V1_PATHS[expected].rsplit("/", 1)[1]
    return WrongService(
        f"{client.url} has no Kamus {verb} API (it answered 404 to {_V1_PATHS[expected]}): "
        f"{looks}. Check --kamus-url (or $KAMUS_URL): it must be the Kamus {expected}'s URL"
    )


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
    asked_wait: Callable[[Exception], float | None] = lambda exc: None,
) -> T:
    """Call until it succeeds, a non-retryable error, or the deadline (a ``time.monotonic``
    instant), with jittered exponential backoff between tries, and never sooner than the server
    asked (``asked_wait``: the seconds of its ``Retry-After``), but never past the deadline."""
    wait = 0.5
    while True:
        try:
            return call()
        except Exception as exc:
            remaining = deadline - time.monotonic()
            if not retryable(exc) or remaining <= 0:
                raise
            pause = random.uniform(0.5, 1.0) * wait  # noqa: S311 - jitter
            pause = min(max(pause, asked_wait(exc) or 0.0), remaining)
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
    client's budget is full, and the next batch must wait off that debt (kamus/server/ratelimit.py).
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
    if status == 404:
        raise wrong_service(client, "encryptor")
    if status != 200:
        raise ServerError(status, server_message(status, answer))
    return answer.decode("utf-8")
