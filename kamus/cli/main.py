"""The ``kamus`` command."""

import contextlib
import functools
import os
import signal
import ssl
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, NoReturn

import click
from click.core import ParameterSource

from kamus import __version__
from kamus.cli.client import ClientError, KamusClient, UsageError
from kamus.cli.formats import FORMATS
from kamus.cli.keysecret import create_key_secret
from kamus.cli.settings import load_settings
from kamus.server.logs import configure_logging
from kamus.server.services import NAMES, SERVICES, Service, ServiceName

if TYPE_CHECKING:
    from kamus.cli.recipients import Sealing

# The service modules (settings, providers, FastAPI) load only in `kamus serve`: `kamus init`
# runs at every pod start, and importing them cost it more time than decrypting.


def restore_stop_signals() -> None:
    """Ctrl-C and SIGTERM stop a long-running command even when it was started with them
    ignored: a script's ``make test &`` makes the shell ignore SIGINT in the job, and every
    child inherits that. The dispositions of a normal start, which its children inherit too."""
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


@click.group()
@click.version_option(__version__, prog_name="kamus")
def main() -> None:
    """Kamus: Kubernetes-native secret encryption."""


main.add_command(create_key_secret)


@main.command(short_help="Run the encryptor, the decryptor, the controller or the injector.")
@click.argument("service", type=click.Choice(NAMES))
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option(
    "--port",
    type=click.IntRange(0, 65535),
    help="Port to listen on (0: any free one). Default: 9090 for the encryptor, 9091 for the "
    "decryptor, 9092 for the controller, 8443 for the injector.",
)
@click.option(
    "--workers",
    type=click.IntRange(1, 64),
    help="Worker processes for the encryptor or the decryptor (default: Server__Workers, 1).",
)
def serve(service: ServiceName, host: str, port: int | None, workers: int | None) -> None:
    """Run the encryptor, the decryptor, the controller or the injector, configured from the
    environment (Kamus's setting names: README.md, Settings).

    \b
    Examples:
      KeyManagement__AES__Key=$(openssl rand -base64 32) kamus serve encryptor
      kamus serve decryptor --host 0.0.0.0 --workers 2
    """
    import uvicorn

    from kamus.server.errors import ConfigurationError
    from kamus.server.tls import TlsReloader

    restore_stop_signals()
    settings = load_settings()
    configure_logging(settings.logging.level)
    workers = workers or settings.server.workers
    spec = SERVICES[service]
    if workers > 1 and not spec.multi_worker:
        raise click.ClickException(
            f"the {service} runs in one process; run more replicas instead (leader election)"
        )
    try:
        # Built here even for several workers, so that a configuration error stops the command
        # before any worker starts.
        app = spec.create_app(settings)
    except ConfigurationError as exc:
        raise click.ClickException(str(exc)) from None
    tls = settings.server
    for name, path in [
        ("Server__TlsCertFile", tls.tls_cert_file),
        ("Server__TlsKeyFile", tls.tls_key_file),
        ("Server__TlsClientCaFile", tls.tls_client_ca_file),
    ]:
        if path is not None and not os.access(path, os.R_OK):
            raise click.ClickException(f"{name}: {path} cannot be read")
    uvicorn.run(
        # Several workers need an import string: each process builds its own app.
        app if workers == 1 else f"kamus.server.asgi:{service}",
        factory=workers > 1,
        workers=workers,
        host=host,
        port=spec.default_port if port is None else port,
        ssl_certfile=tls.tls_cert_file,
        ssl_keyfile=tls.tls_key_file,
        ssl_ca_certs=str(tls.tls_client_ca_file) if tls.tls_client_ca_file else None,
        # A client CA means clients must present a certificate it signed (mutual TLS).
        ssl_cert_reqs=ssl.CERT_REQUIRED if tls.tls_client_ca_file else ssl.CERT_NONE,
        ssl_context_factory=(
            TlsReloader(
                tls.tls_cert_file,
                tls.tls_key_file,
                tls.tls_client_ca_file,
                interval_seconds=tls.tls_reload_seconds,
            )
            if tls.tls_cert_file and tls.tls_key_file
            else _built_in_tls(spec)
        ),
        # uvloop when installed; httptools (a dependency) with deadlines for slow clients.
        loop="auto",
        http=_http_protocol(spec),
        timeout_graceful_shutdown=settings.server.shutdown_timeout_seconds,
        limit_concurrency=settings.server.max_connections,
        log_config=None,
        access_log=False,
        server_header=False,
        lifespan="on",
    )


def _built_in_tls(spec: Service) -> Callable[..., ssl.SSLContext] | None:
    """The service's own TLS (the injector's CA), for when no certificate files are set."""
    if spec.built_in_tls is None:
        return None
    import importlib

    module, _, name = spec.built_in_tls.partition(":")
    factory: Callable[..., ssl.SSLContext] = getattr(importlib.import_module(module), name)()
    return factory


def _http_protocol(spec: Service) -> str:
    """kamus/server/http.py's protocol where httptools is installed, else uvicorn's own choice."""
    import importlib.util

    if not importlib.util.find_spec("httptools"):
        return "auto"
    return f"kamus.server.http:{spec.http_protocol}"


@main.command(short_help="Exit 0 if the local service answers (HEALTHCHECK).")
@click.option(
    "--url",
    envvar="KAMUS_HEALTHCHECK_URL",
    default="http://127.0.0.1:9090/healthz",
    show_default=True,
    help="What to ask (env KAMUS_HEALTHCHECK_URL, which the images set).",
)
@click.option(
    "--timeout",
    default=4.0,
    show_default=True,
    type=click.FloatRange(0, min_open=True),
    help="Seconds to wait for the answer.",
)
def healthcheck(url: str, timeout: float) -> None:
    """Exit 0 if the service on this machine answers URL with 200: the images' HEALTHCHECK.

    When the service serves TLS (Server__TlsCertFile is set), an http:// URL is asked over
    https, and the certificate is not verified, as Kubernetes' HTTPS probes do not: the question
    is whether the process here is alive, not who it is. A service that requires client
    certificates (Server__TlsClientCaFile) cannot be asked this way."""
    import urllib.error
    import urllib.request

    context = None
    if load_settings().server.tls_cert_file is not None:
        url = "https://" + url.removeprefix("http://") if url.startswith("http://") else url
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    try:
        with urllib.request.urlopen(url, timeout=timeout, context=context) as response:  # noqa: S310 - an operator's URL
            status = response.status
    except urllib.error.HTTPError as exc:
        status = exc.code
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise click.ClickException(f"{url} does not answer: {reason}") from None
    if status != 200:
        raise click.ClickException(f"{url} answered {status}")
    click.echo(f"{url} answered 200")


@main.command(short_help="Run both services locally, for a try-out (make run).")
@click.option(
    "--state-dir",
    default=".kamus-dev",
    show_default=True,
    type=click.Path(file_okay=False),
    help="Where the generated development key and token live (keep it out of git).",
)
@click.option(
    "--encryptor-port",
    default=9090,
    show_default=True,
    type=click.IntRange(1, 65535),
    help="The encryptor's port on 127.0.0.1.",
)
@click.option(
    "--decryptor-port",
    default=9091,
    show_default=True,
    type=click.IntRange(1, 65535),
    help="The decryptor's port on 127.0.0.1.",
)
def dev(state_dir: str, encryptor_port: int, decryptor_port: int) -> None:
    """Run both services on 127.0.0.1 with a generated key and a static token file, for a
    try-out on one machine (never in a cluster). Ctrl-C stops both."""
    from kamus.cli.dev import run_dev

    restore_stop_signals()
    sys.exit(run_dev(state_dir, encryptor_port, decryptor_port))


# -- the client commands ----------------------------------------------------------------------


def _fail(error: ClientError) -> NoReturn:
    click.echo(f"kamus: {error}", err=True)
    sys.exit(error.exit_code)


def _secret_text(secret: str | None, secret_file: str | None, encoding: str) -> str:
    if (secret is None) == (secret_file is None):
        raise UsageError("give exactly one of --secret and --secret-file ('-' reads stdin)")
    from kamus.cli.inputs import decode_text

    if "-" in (secret, secret_file):
        return decode_text(sys.stdin.buffer.read(), "stdin", encoding)
    if secret is not None:
        return secret
    assert secret_file is not None
    try:
        with open(secret_file, "rb") as handle:
            data = handle.read()
    except OSError as exc:
        raise UsageError(f"cannot read --secret-file {secret_file}: {exc.strerror}") from None
    # A decoding error names the line and column, never the bytes: they are the secret.
    return decode_text(data, secret_file, encoding)


def _write_output(text: str, output: str | None, overwrite: bool) -> None:
    if output is None:
        click.echo(text)
        return
    try:
        with open(output, "w" if overwrite else "x", encoding="utf-8") as handle:
            handle.write(text)
    except FileExistsError:
        raise UsageError(f"{output} exists; pass --overwrite to replace it") from None
    except OSError as exc:
        raise UsageError(f"cannot write {output}: {exc.strerror}") from None
    click.echo(f"kamus: wrote {output}", err=True)


def _user_token(
    url: str,
    from_kubeconfig: bool,
    token_file: str | None,
    context: str | None,
    allow_token_over_http: bool,
    *,
    to_encryptor: bool = True,
) -> str | None:
    """The caller's token for a service that authenticates callers, after refusing to send one
    over plain http; warnings go to stderr. A token the apiserver also accepts is worth a
    warning when it goes to the encryptor, a public service; not when it goes to the
    decryptor, which every secret is trusted to already."""
    from kamus.cli.client import (
        kubeconfig_token,
        read_token_file,
        token_audience_warning,
        token_transport_warning,
    )

    if context and not from_kubeconfig:
        raise UsageError("--kube-context goes with --kubeconfig-token")
    if from_kubeconfig and token_file:
        raise UsageError(
            "--token-file (or $KAMUS_TOKEN_FILE) and --kubeconfig-token are mutually "
            "exclusive: give one token"
        )
    if not from_kubeconfig and not token_file:
        return None
    # Before the token is read: an exec plugin need not mint a token that will not be sent.
    if warning := token_transport_warning(url, allow_token_over_http):
        click.echo(f"kamus: warning: {warning}", err=True)
    if token_file:
        token, apiserver = read_token_file(token_file), None
    else:
        token, apiserver = kubeconfig_token(context)
    if to_encryptor and (warning := token_audience_warning(token, apiserver)):
        click.echo(f"kamus: warning: {warning}", err=True)
    return token


@dataclass(frozen=True)
class Connection:
    """How ``encrypt`` and ``seal`` reach the encryptor: their shared options, as one value."""

    kamus_url: str | None
    allow_insecure_url: bool
    cert_fingerprint: str | None
    ca_bundle: str | None
    kubeconfig_token: bool
    kube_context: str | None
    token_file: str | None
    allow_token_over_http: bool
    timeout: float

    def client(self) -> KamusClient:
        if not self.kamus_url:
            raise UsageError(
                "give the encryptor's URL with --kamus-url (or $KAMUS_URL), or seal without it: "
                "--offline --keys FILE|URL"
            )
        token = _user_token(
            self.kamus_url,
            self.kubeconfig_token,
            self.token_file,
            self.kube_context,
            self.allow_token_over_http,
        )
        return KamusClient(
            self.kamus_url,
            allow_insecure=self.allow_insecure_url,
            fingerprint=self.cert_fingerprint,
            ca_bundle=self.ca_bundle,
            token=token,
            allow_token_over_http=self.allow_token_over_http,
            timeout=self.timeout,
        )

    def public(self, url: str) -> KamusClient:
        """A client for a public resource at ``url`` (the key bundle) with these TLS options;
        no token is ever sent there."""
        return replace(
            self,
            kamus_url=url,
            kubeconfig_token=False,
            kube_context=None,
            token_file=None,
            allow_token_over_http=False,
        ).client()


@dataclass(frozen=True)
class Offline:
    """``--offline`` and its options: seal to signed key bundles and other recipients, with no
    encryptor."""

    offline: bool
    keys: tuple[str, ...]
    recipient: tuple[str, ...]
    threshold: int | None
    trust_anchor: tuple[str, ...]
    allow_expired_keys: bool
    post_quantum: bool
    pin_from_env: bool = False

    def sealer(self, connection: Connection, target: Path) -> "Sealing":
        """The recipients of the command line, else of the ``.kamus.yaml`` rule for ``target``
        (what is being sealed), every bundle verified; warnings go to stderr."""
        from kamus.cli.keys import now, pins_of
        from kamus.cli.recipients import Choice, prepare, rule_for

        if self.keys or self.recipient:
            choice = Choice.of_options(self.keys, self.recipient, self.threshold)
        else:
            if self.threshold:
                raise UsageError("--threshold goes with the recipients it splits the key among")
            found = rule_for(target)
            if found is None:
                raise UsageError(
                    "--offline needs --keys FILE|URL (or $KAMUS_KEYS): the cluster's signed key "
                    "bundle, e.g. from kamus keys fetch -u https://kamus.example.com -o keys.json; "
                    "or --recipient, or a recipients rule in .kamus.yaml whose path matches "
                    f"{target}"
                )
            choice = found
        # The command line's pins, else a rule's own (prepare), else the top-level one.
        explicit = self.trust_anchor or not choice.pins
        pins = pins_of(self.trust_anchor, from_env=self.pin_from_env) if explicit else []
        return prepare(
            choice,
            pins,
            connection.public,
            _say,
            when=now(),
            allow_expired=self.allow_expired_keys,
            post_quantum=self.post_quantum,
        )


def _say(message: str) -> None:
    click.echo(f"kamus: {message}", err=True)


_CONNECTION = tuple(field.name for field in fields(Connection))
_OFFLINE = tuple(field.name for field in fields(Offline) if field.name != "pin_from_env")
# Options that only mean something with an encryptor: given on the command line with --offline,
# they are a mistake worth stopping for (from the environment, they are left unused).
_ONLINE_ONLY = ("kamus_url", "kubeconfig_token", "kube_context", "token_file")
_OFFLINE_ONLY = (
    "keys",
    "recipient",
    "threshold",
    "trust_anchor",
    "allow_expired_keys",
    "post_quantum",
)


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _check_modes(ctx: click.Context, connection: Connection, offline: Offline) -> None:
    given = {
        name
        for name in (*_ONLINE_ONLY, *_OFFLINE_ONLY)
        if ctx.get_parameter_source(name) is ParameterSource.COMMANDLINE
    }
    if offline.offline:
        if clash := [n for n in _ONLINE_ONLY if n in given]:
            raise UsageError(
                f"--offline contacts no encryptor, so {', '.join(map(_flag, clash))} has no use: "
                "drop it (the keys come from --keys)"
            )
    elif clash := [n for n in _OFFLINE_ONLY if n in given]:
        raise UsageError(f"{', '.join(map(_flag, clash))} goes with --offline")


def _options(*options: Callable[[Any], Any]) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Apply click options in the order they are listed (which is the order --help shows)."""

    def decorate(command: Callable[..., Any]) -> Callable[..., Any]:
        for option in reversed(options):
            command = option(command)
        return command

    return decorate


def _tls_options(what: str, server: str = "the encryptor") -> list[Callable[[Any], Any]]:
    """How to reach a server over https: shared by the commands that talk to the encryptor."""
    return [
        click.option(
            "--allow-insecure-url",
            is_flag=True,
            help=f"Allow a plain-http URL ({what} then cross the network in clear).",
        ),
        click.option(
            "--cert-fingerprint",
            help="Pin the server certificate: its SHA-256 or SHA-1 fingerprint in "
            "hex (colons optional), checked before anything is sent.",
        ),
        click.option(
            "--ca-bundle",
            type=click.Path(exists=True, dir_okay=False),
            help="CA certificates to trust for the server, in PEM.",
        ),
        click.option(
            "--timeout",
            type=click.FloatRange(0, min_open=True),
            default=30.0,
            show_default=True,
            help=f"Seconds to wait for {server} to connect and to answer.",
        ),
    ]


def _token_options(kubeconfig_help: str, token_file_more: str = "") -> list[Callable[[Any], Any]]:
    """How to send the caller's Kubernetes token: to the encryptor, or to the decryptor's
    rewrap."""
    return [
        click.option("--kubeconfig-token", is_flag=True, help=kubeconfig_help),
        click.option("--kube-context", help="The kubeconfig context for --kubeconfig-token."),
        click.option(
            "--token-file",
            envvar="KAMUS_TOKEN_FILE",
            type=click.Path(dir_okay=False),
            help=f"Send the token in this file (or $KAMUS_TOKEN_FILE){token_file_more}.",
        ),
        click.option(
            "--allow-token-over-http",
            is_flag=True,
            help="Send the token over a plain-http URL (kubectl port-forward only: it "
            "crosses the network in clear text).",
        ),
    ]


def _output_options(what: str) -> list[Callable[[Any], Any]]:
    return [
        click.option("-o", "--output", help=f"Write {what} to this file instead of stdout."),
        click.option("-O", "--overwrite", is_flag=True, help="Replace --output if it exists."),
    ]


_TRUST_ANCHOR = click.option(
    "--trust-anchor",
    envvar="KAMUS_TRUST_ANCHOR",
    help="The pinned anchor fingerprint of the key bundle, ed25519:… (or $KAMUS_TRUST_ANCHOR; "
    "default: trust-anchor in .kamus.yaml at the repository root).",
)


def client_options(command: Callable[..., None]) -> Callable[..., None]:
    """The options ``encrypt`` and ``seal`` share (kamus-cli's names, and offline sealing's).
    They reach the command as ``connection: Connection`` and ``offline: Offline``."""

    @functools.wraps(command)
    def with_connection(**options: Any) -> None:
        ctx = click.get_current_context()
        connection = Connection(**{name: options.pop(name) for name in _CONNECTION})
        offline = Offline(
            **{name: options.pop(name) for name in _OFFLINE},
            pin_from_env=ctx.get_parameter_source("trust_anchor") is ParameterSource.ENVIRONMENT,
        )
        try:
            _check_modes(ctx, connection, offline)
        except ClientError as error:
            _fail(error)
        command(connection=connection, offline=offline, **options)

    tls = _tls_options("secrets")
    return _options(
        click.option(
            "-u",
            "--kamus-url",
            envvar="KAMUS_URL",
            help="The encryptor's URL (or $KAMUS_URL); not with --offline.",
        ),
        *tls[:3],
        *_token_options(
            "Send the current kubeconfig user's token, for an encryptor with "
            "Encryptor__Authentication=kubernetes.",
            ", one made for the encryptor: kubectl create token SA --audience kamus-encryptor",
        ),
        tls[3],
        click.option(
            "--offline",
            is_flag=True,
            help="Seal to the cluster's signed key bundle (--keys): no encryptor is contacted.",
        ),
        click.option(
            "--keys",
            envvar="KAMUS_KEYS",
            multiple=True,
            help="With --offline: a cluster's key bundle, a file or an https URL (or $KAMUS_KEYS). "
            "A URL needs a pinned anchor (--trust-anchor). Repeat it for several clusters: any "
            "one of them opens the value.",
        ),
        click.option(
            "--recipient",
            multiple=True,
            help="With --offline: another recipient, repeatable: age:age1… (a break-glass key "
            "for kamus recover), aws:<key ARN>, gcp:<CryptoKey name> or azure:<key URL>.",
        ),
        click.option(
            "--threshold",
            type=click.IntRange(2, 32),
            help="With --offline: split the data key so that this many recipients (each --keys "
            "and --recipient a group of its own) are needed to open a value. Default: any one.",
        ),
        click.option(
            "--trust-anchor",
            envvar="KAMUS_TRUST_ANCHOR",
            multiple=True,
            help="The pinned anchor fingerprint of the key bundle, ed25519:… (or "
            "$KAMUS_TRUST_ANCHOR; default: trust-anchor in .kamus.yaml at the repository root). "
            "Repeat it for several clusters' bundles.",
        ),
        click.option(
            "--allow-expired-keys",
            is_flag=True,
            help="With --offline: seal even if the bundle's keys have expired (each value "
            "records it).",
        ),
        click.option(
            "--post-quantum",
            is_flag=True,
            help="With --offline: seal with the ML-KEM-768+X25519 hybrid suite.",
        ),
        *_output_options("the result"),
        click.option(
            "--log-level",
            type=click.Choice(["debug", "info", "warn", "error"], case_sensitive=False),
            default="info",
            show_default=True,
            help="How much the command says on stderr (warn or error: only problems).",
        ),
    )(with_connection)


@main.command(short_help="Encrypt a secret for a service account.")
@click.option("-s", "--secret", help="The secret; '-' reads it from stdin.")
@click.option("-f", "--secret-file", help="A file holding the secret; '-' reads stdin.")
@click.option(
    "--secret-file-encoding",
    default="utf-8",
    show_default=True,
    help="The text encoding of --secret-file or stdin (any Python codec, e.g. latin-1).",
)
@click.option("-a", "--service-account", required=True, help="The workload's service account.")
@click.option("-n", "--namespace", required=True, help="The workload's namespace.")
@click.option(
    "-i",
    "--ignore-new-line",
    is_flag=True,
    help="Encrypt a trailing newline as it is, without warning or asking.",
)
@client_options
def encrypt(
    secret: str | None,
    secret_file: str | None,
    secret_file_encoding: str,
    service_account: str,
    namespace: str,
    ignore_new_line: bool,
    connection: Connection,
    offline: Offline,
    output: str | None,
    overwrite: bool,
    log_level: str,
) -> None:
    """Encrypt a secret for a service account. Prints only the ciphertext.

    With --offline, it is sealed to the cluster's signed key bundle (--keys) without
    contacting the encryptor.

    Exit codes: 2 usage, 3 network or TLS, 4 certificate pin mismatch, 5 the server refused,
    6 the key bundle is refused (bad signature, not the pinned anchor, expired).

    \b
    Examples:
      kamus encrypt -s 's3cr3t' -a my-app -n team-a -u https://kamus.example.com \\
        --cert-fingerprint "$KAMUS_CERT_SHA256"
      printf %s "$PASSWORD" | kamus encrypt -s - -a my-app -n team-a -u "$KAMUS_URL"
      kamus encrypt -f tls.key -a my-app -n team-a -u "$KAMUS_URL" -o tls.key.enc
      kamus encrypt -s 's3cr3t' -a my-app -n team-a --offline --keys .kamus/keys.json
    """
    from kamus.cli.client import encrypt_one

    quiet = log_level.lower() in ("warn", "error")
    try:
        if offline.offline:
            from kamus.cli.keys import check_identity

            identity = check_identity(namespace, service_account)
        text = _secret_text(secret, secret_file, secret_file_encoding)
        if text.endswith("\n") and not ignore_new_line:
            click.echo(
                "kamus: the secret ends with a newline, which will be encrypted too "
                "(pass --ignore-new-line to skip this check)",
                err=True,
            )
            if sys.stdin.isatty() and not click.confirm("Encrypt it with the newline?", err=True):
                raise UsageError("aborted: nothing was encrypted")
        if offline.offline:
            sealer = offline.sealer(connection, Path(output or "."))
            try:
                [ciphertext] = sealer.seal(identity, [text])
            finally:
                sealer.close()
            done = f"sealed offline for {identity} to {sealer.describe()}"
        else:
            with connection.client() as client:
                ciphertext = encrypt_one(client, namespace, service_account, text)
            done = f"encrypted for {namespace}:{service_account}"
        if not quiet:
            click.echo(f"kamus: {done}", err=True)
        _write_output(ciphertext, output, overwrite)
    except ClientError as error:
        _fail(error)


@main.command(short_help="Turn a Secret manifest into a KamusSecret.")
@click.argument("manifest", type=click.File("rb"), default="-")
@click.option(
    "-a",
    "--service-account",
    required=True,
    help="The service account that will decrypt the values.",
)
@click.option("-n", "--namespace", help="Namespace for Secrets that name none.")
@click.option(
    "--format",
    "output_format",
    type=click.Choice(["kamussecret", "configmap"], case_sensitive=False),
    default="kamussecret",
    show_default=True,
    help="A KamusSecret for the controller, or a ConfigMap for the init container.",
)
@client_options
def seal(
    manifest: BinaryIO,
    service_account: str,
    namespace: str | None,
    output_format: str,
    connection: Connection,
    offline: Offline,
    output: str | None,
    overwrite: bool,
    log_level: str,
) -> None:
    """Turn a Secret manifest (a file, or stdin) into a KamusSecret of ciphertexts, or a
    ConfigMap for the init container. The plaintext Secret never needs to reach git.

    With --offline, the values are sealed to the cluster's signed key bundle (--keys), one
    data key per Secret, without contacting the encryptor.

    \b
    Examples:
      kamus seal secret.yaml -a my-app -u "$KAMUS_URL" -o kamussecret.yaml
      kubectl create secret generic db --from-literal=password=s3cr3t --dry-run=client \\
        -o yaml | kamus seal -a my-app -n team-a -u "$KAMUS_URL" --format configmap
      kamus seal secret.yaml -a my-app --offline --keys .kamus/keys.json -o sealed.yaml
    """
    from kamus.cli.client import encrypt_values
    from kamus.cli.inputs import decode_text
    from kamus.cli.seal import seal_documents

    name = str(getattr(manifest, "name", "-"))
    source = "stdin" if name in ("-", "<stdin>") else name
    try:
        if offline.offline:
            from kamus.cli.keys import check_identity

            # The service account is checked before anything is read; each namespace as the
            # manifest names it.
            check_identity(namespace or "default", service_account)
        text = decode_text(manifest.read(), source)
        with contextlib.ExitStack() as stack:
            if offline.offline:
                target = output or (name if source != "stdin" else ".")
                sealer = offline.sealer(connection, Path(target))
                stack.callback(sealer.close)

                def encrypt(namespace: str, values: Mapping[str, str]) -> dict[str, str]:
                    return sealer.seal_values(namespace, service_account, values)
            else:
                client = stack.enter_context(connection.client())

                def encrypt(namespace: str, values: Mapping[str, str]) -> dict[str, str]:
                    return encrypt_values(client, namespace, service_account, values)

            sealed = seal_documents(
                text,
                source=source,
                service_account=service_account,
                namespace=namespace,
                output_format=output_format.lower(),
                encrypt=encrypt,
            )
        _write_output(sealed.rstrip("\n"), output, overwrite)
    except ClientError as error:
        _fail(error)


@main.group(short_help="Export, fetch and verify the key bundle for offline sealing.")
def keys() -> None:
    """The cluster's signed key bundle: the public keys that `kamus encrypt --offline` and
    `kamus seal --offline` seal to, signed by the cluster's anchor key. Pin the anchor's
    fingerprint once (--trust-anchor, $KAMUS_TRUST_ANCHOR or trust-anchor in .kamus.yaml);
    renewed sealing keys then need no new pin.

    Exit codes: 2 usage, 3 network or TLS, 4 certificate pin mismatch, 5 the server refused,
    6 the bundle is refused (bad signature, not the pinned anchor, expired).
    """


@keys.command("export", short_help="Print the signed key bundle of this cluster's keys.")
@_options(*_output_options("the bundle"))
def keys_export(output: str | None, overwrite: bool) -> None:
    """Print the signed key bundle that the key provider settings in the environment make (the
    same as the encryptor serves), for operators and the chart's ConfigMap.

    \b
    Examples:
      KeyManagement__AES__KeyFile=aes.key kamus keys export -o keys.json
      KeyManagement__Provider=AwsKms KeyManagement__Sealing__WrappedSeedsFile=seeds \\
        kamus keys export -o keys.json
      kamus keys export | kamus keys verify -
    """
    import asyncio

    from crypto.errors import KeyManagerUnavailable
    from kamus.cli.keys import now
    from kamus.server.errors import ConfigurationError
    from kamus.server.providers import build_key_manager
    from kamus.server.sealing import export_bundle, sealing_masters

    settings = load_settings()
    try:
        # The KMS modes unwrap the sealing seed: this needs decrypt permission on its KMS key.
        manager = (
            None if settings.key_management.provider == "AESKey" else build_key_manager(settings)
        )
        masters = asyncio.run(sealing_masters(settings, manager))
        text = export_bundle(settings, now(), masters)
        _write_output(text if output else text.rstrip("\n"), output, overwrite)
    except ConfigurationError as exc:
        _fail(ClientError(f"cannot export the key bundle: {exc}"))
    except KeyManagerUnavailable as exc:
        _fail(ClientError(f"cannot export the key bundle: {exc.reason}"))
    except ClientError as error:
        _fail(error)


@keys.command("fetch", short_help="Download the key bundle from an encryptor and check it.")
@_options(
    click.option(
        "-u",
        "--kamus-url",
        envvar="KAMUS_URL",
        required=True,
        help="The encryptor's URL (or $KAMUS_URL); the bundle is at /api/v2/keys.",
    ),
    *_tls_options("the keys")[:3],
    _TRUST_ANCHOR,
    _tls_options("the keys")[3],
    *_output_options("the bundle"),
)
def keys_fetch(
    kamus_url: str,
    allow_insecure_url: bool,
    cert_fingerprint: str | None,
    ca_bundle: str | None,
    trust_anchor: str | None,
    timeout: float,
    output: str | None,
    overwrite: bool,
) -> None:
    """Download the encryptor's signed key bundle, check its signature and, when an anchor is
    pinned, that it comes from that anchor (following a link if the anchor changed). The first
    time, with no pin, it prints the anchor fingerprint to pin.

    \b
    Examples:
      kamus keys fetch -u https://kamus.example.com -o .kamus/keys.json
      kamus keys fetch -u "$KAMUS_URL" --trust-anchor ed25519:9c1e… -o .kamus/keys.json
    """
    from kamus.cli.keys import check_expiry, download, find_pin, how_to_pin, keys_url, now, verified

    ctx = click.get_current_context()
    try:
        pin = find_pin(
            trust_anchor,
            from_env=ctx.get_parameter_source("trust_anchor") is ParameterSource.ENVIRONMENT,
        )
        base, _ = keys_url(kamus_url)
        connection = Connection(
            kamus_url=base,
            allow_insecure_url=allow_insecure_url,
            cert_fingerprint=cert_fingerprint,
            ca_bundle=ca_bundle,
            kubeconfig_token=False,
            kube_context=None,
            token_file=None,
            allow_token_over_http=False,
            timeout=timeout,
        )
        with connection.public(base) as client:
            text = download(client)
        loaded = verified(text, pin, kamus_url, _say)
        check_expiry(loaded, now(), _say, allow_expired=False, refuse=False)
        _write_output(loaded.text if output else loaded.text.rstrip("\n"), output, overwrite)
        if pin is None:
            _say(
                f"first use: nothing pins this bundle's anchor {loaded.anchor}. Check that "
                "fingerprint with your cluster's operator (kamus keys export | kamus keys verify "
                f"- on their side), then {how_to_pin(loaded.anchor)}"
            )
        else:
            _say(f"the bundle is signed by the pinned anchor ({pin.source})")
    except ClientError as error:
        _fail(error)


@keys.command("verify", short_help="Check a key bundle file and show its keys.")
@click.argument("file")
@_options(_TRUST_ANCHOR)
def keys_verify(file: str, trust_anchor: str | None) -> None:
    """Check FILE's signature and, when an anchor is pinned, that it comes from that anchor;
    then print the anchor fingerprint, the cluster, and each key's id, suite, state,
    activation and expiry. Exits non-zero on a bad signature, another anchor, or keys that
    have expired; warns when they expire within 14 days. FILE '-' reads stdin.

    \b
    Examples:
      kamus keys verify .kamus/keys.json
      kamus keys verify keys.json --trust-anchor ed25519:9c1e…
    """
    from kamus.cli.keys import (
        BundleRefused,
        check_expiry,
        describe,
        find_pin,
        how_to_pin,
        now,
        read_bundle_file,
        verified,
    )

    ctx = click.get_current_context()
    try:
        pin = find_pin(
            trust_anchor,
            from_env=ctx.get_parameter_source("trust_anchor") is ParameterSource.ENVIRONMENT,
        )
        text = sys.stdin.buffer.read() if file == "-" else read_bundle_file(file)
        source = "stdin" if file == "-" else file
        loaded = verified(text, pin, source, _say)
        click.echo(describe(loaded))
        if pin is None:
            _say(f"nothing pins the anchor; to trust it, {how_to_pin(loaded.anchor)}")
        if check_expiry(loaded, now(), _say, allow_expired=False, refuse=False):
            raise BundleRefused(f"the key bundle {source} has expired")
    except ClientError as error:
        _fail(error)


@main.command(short_help="Decrypt mounted ciphertexts into files (init container).")
@click.option(
    "-e",
    "--encrypted-folders",
    required=True,
    help="Folders of encrypted files (ConfigMap mounts), comma-separated.",
)
@click.option(
    "-d",
    "--decrypted-path",
    required=True,
    type=click.Path(file_okay=False),
    help="Where to write (an in-memory emptyDir).",
)
@click.option("-n", "--decrypted-file-name", help="The output file (all formats but files).")
@click.option(
    "-f",
    "--output-format",
    default="json",
    show_default=True,
    type=click.Choice(FORMATS, case_sensitive=False),
    help="One file of all values (json, cfg, cfg-strict, env, custom: a Jinja2 template), or "
    "one file per value (files).",
)
@click.option(
    "--kamus-url", envvar="KAMUS_URL", required=True, help="The decryptor's URL (or $KAMUS_URL)."
)
@click.option(
    "--token-file",
    envvar="TOKEN_FILE_PATH",
    show_default=True,
    default="/var/run/secrets/kubernetes.io/serviceaccount/token",
    help="The pod's service account token (or $TOKEN_FILE_PATH).",
)
@click.option(
    "--timeout",
    type=click.FloatRange(min=0),
    default=60.0,
    show_default=True,
    help="Seconds to keep retrying while the decryptor is unreachable or answers 503.",
)
@click.option(
    "--file-mode",
    default="0600",
    show_default=True,
    help="Permissions of the written files, in octal.",
)
@click.option(
    "--ca-bundle",
    envvar="KAMUS_CA_BUNDLE",
    type=click.Path(exists=True, dir_okay=False),
    help="CA certificates for an https decryptor (or $KAMUS_CA_BUNDLE).",
)
@click.option(
    "--ca-cert",
    envvar="KAMUS_CA_CERT",
    help="The same as PEM text rather than a file (or $KAMUS_CA_CERT: the injector sets it).",
)
def init(
    encrypted_folders: str,
    decrypted_path: str,
    decrypted_file_name: str | None,
    output_format: str,
    kamus_url: str,
    token_file: str,
    timeout: float,
    file_mode: str,
    ca_bundle: str | None,
    ca_cert: str | None,
) -> None:
    """Decrypt mounted ciphertexts into files: Kamus's init container.

    \b
    Examples:
      kamus init -e /encrypted -d /secrets -n config.json --kamus-url http://kamus-decryptor
      kamus init -e /encrypted,/more -d /secrets -f files --kamus-url "$KAMUS_URL"
    """
    from kamus.cli.init import DEFAULT_TOKEN_FILE, InitOptions, run_init

    try:
        try:
            mode = int(file_mode, 8)
        except ValueError:
            raise UsageError(f"--file-mode {file_mode} is not an octal mode like 0600") from None
        run_init(
            InitOptions(
                folders=[Path(f.strip()) for f in encrypted_folders.split(",") if f.strip()],
                output_dir=Path(decrypted_path),
                file_name=decrypted_file_name,
                output_format=output_format.lower(),
                url=kamus_url,
                # Kamus read an empty TOKEN_FILE_PATH as "the default".
                token_file=Path(token_file or DEFAULT_TOKEN_FILE),
                timeout=timeout,
                file_mode=mode,
                ca_bundle=ca_bundle,
                ca_data=ca_cert or None,
            )
        )
    except ClientError as error:
        _fail(error)


def _tree_options(command: Callable[..., None]) -> Callable[..., None]:
    """What ``rewrap`` and ``verify`` share: the tree, the identity's fallbacks, and how to reach
    the decryptor with the caller's Kubernetes token."""
    tls = _tls_options("values and your token", "the decryptor")
    return _options(
        click.argument("paths", nargs=-1, required=True, type=click.Path(exists=True)),
        click.option(
            "-n",
            "--namespace",
            help="The namespace of every value found (a kustomize overlay's); wins over "
            "metadata.namespace.",
        ),
        click.option(
            "-a",
            "--service-account",
            help="The service account of raw ciphertext files and of ConfigMaps without the "
            "kamus.soluto.com/service-account annotation.",
        ),
        click.option(
            "-u",
            "--url",
            envvar="KAMUS_DECRYPTOR_URL",
            help="The decryptor's URL (or $KAMUS_DECRYPTOR_URL), e.g. http://127.0.0.1:9091 "
            "through kubectl port-forward.",
        ),
        *tls[:3],
        *_token_options(
            "Send the current kubeconfig user's token (RBAC must let it update kamussecrets "
            "in each namespace).",
        ),
        tls[3],
    )(command)


def _decryptor_client(
    url: str | None,
    allow_insecure_url: bool,
    cert_fingerprint: str | None,
    ca_bundle: str | None,
    kubeconfig_token: bool,
    kube_context: str | None,
    token_file: str | None,
    allow_token_over_http: bool,
    timeout: float,
) -> KamusClient:
    if not url:
        raise UsageError(
            "give the decryptor's URL with -u (or $KAMUS_DECRYPTOR_URL); it is internal to the "
            "cluster: kubectl port-forward svc/<release>-decryptor 9091:80, then "
            "-u http://127.0.0.1:9091 --allow-insecure-url --allow-token-over-http"
        )
    token = _user_token(
        url,
        kubeconfig_token,
        token_file,
        kube_context,
        allow_token_over_http,
        to_encryptor=False,
    )
    if token is None:
        raise UsageError(
            "the decryptor needs your Kubernetes token: --kubeconfig-token, or --token-file FILE"
        )
    return KamusClient(
        url,
        allow_insecure=allow_insecure_url,
        fingerprint=cert_fingerprint,
        ca_bundle=ca_bundle,
        token=token,
        allow_token_over_http=allow_token_over_http,
        timeout=timeout,
    )


def _finish(lines: list[str], failed: bool) -> None:
    click.echo("\n".join(lines))
    if failed:
        sys.exit(1)


@main.command(short_help="Move every ciphertext in files and directories to the active key.")
@click.option(
    "--check",
    "mode",
    flag_value="check",
    help="Exit 1 if a value is under a key that is not active or in an older format; needs "
    "--keys, not the decryptor (a CI gate).",
)
@click.option(
    "--dry-run",
    "mode",
    flag_value="dry-run",
    help="Print what would change (the default); nothing is written.",
)
@click.option(
    "--in-place", "mode", flag_value="in-place", help="Rewrite the files, each atomically."
)
@click.option(
    "--upgrade-legacy",
    is_flag=True,
    help="Bind Kamus's AES values made without key derivation to the identity found for them "
    "(needs update on kamussecrets/legacy, cluster-wide).",
)
@click.option(
    "--keys",
    envvar="KAMUS_KEYS",
    help="With --check: the cluster's key bundle, a file or an https URL (or $KAMUS_KEYS).",
)
@_options(_TRUST_ANCHOR)
@_tree_options
def rewrap(
    paths: tuple[str, ...],
    mode: str | None,
    upgrade_legacy: bool,
    keys: str | None,
    trust_anchor: str | None,
    namespace: str | None,
    service_account: str | None,
    **connection: Any,
) -> None:
    """Rewrap every Kamus ciphertext in PATHS (KamusSecrets, ConfigMaps of ciphertexts, raw
    ciphertext files; directories are walked) under the active key. The decryptor does it:
    no plaintext reaches this machine, and each value keeps its identity. YAML comments,
    order and quoting are kept; only the ciphertexts change.

    \b
    Examples:
      kubectl port-forward -n kamus svc/kamus-decryptor 9091:80 &
      kamus rewrap deploy/ -u http://127.0.0.1:9091 --allow-insecure-url \\
        --allow-token-over-http --kubeconfig-token --in-place
      kamus rewrap . --check --keys .kamus/keys.json
    """
    from kamus.cli.rewrap import ask_decryptor, check_against, report, write_files
    from kamus.cli.tree import scan

    try:
        found = scan(paths, namespace=namespace, service_account=service_account)
        for skipped in found.skipped:
            _say(f"{skipped.file}:{skipped.line}: skipped: {skipped.reason}")
        if mode == "check":
            if not keys:
                raise UsageError(
                    "--check needs the cluster's key bundle: --keys FILE|URL (or $KAMUS_KEYS), "
                    "e.g. from kamus keys fetch"
                )
            from kamus.cli.keys import find_pin, load_verified

            loaded = load_verified(keys, find_pin(trust_anchor), _bundle_client(connection), _say)
            outcome = report(found, check_against(found, loaded), mode="check")
            _finish(outcome.lines, bool(outcome.failed or outcome.stale))
            return
        in_place = mode == "in-place"
        with _decryptor_client(**connection) as client:
            results = ask_decryptor(
                client, found, check=not in_place, upgrade_legacy=upgrade_legacy
            )
        written, untouched = write_files(found, results) if in_place else ([], [])
        outcome = report(
            found,
            results,
            mode="in-place" if in_place else "dry-run",
            written=written,
            untouched=untouched,
        )
        _finish(outcome.lines, bool(outcome.failed))
    except ClientError as error:
        _fail(error)


@main.command(short_help="Check that every ciphertext in files and directories opens.")
@_tree_options
def verify(
    paths: tuple[str, ...],
    namespace: str | None,
    service_account: str | None,
    **connection: Any,
) -> None:
    """Ask the decryptor whether each Kamus ciphertext in PATHS opens for the identity it is
    bound to (the namespace and service account of its manifest). It never answers a
    plaintext. Exits 1 if any value does not open.

    \b
    Examples:
      kamus verify deploy/ -u https://kamus-decryptor.example --kubeconfig-token
    """
    from kamus.cli.rewrap import ask_decryptor, report
    from kamus.cli.tree import scan

    try:
        found = scan(paths, namespace=namespace, service_account=service_account)
        for skipped in found.skipped:
            _say(f"{skipped.file}:{skipped.line}: skipped: {skipped.reason}")
        with _decryptor_client(**connection) as client:
            results = ask_decryptor(client, found, check=True)
        outcome = report(found, results, mode="verify")
        _finish(outcome.lines, bool(outcome.failed))
    except ClientError as error:
        _fail(error)


@main.command(
    short_help="Check that injection, the encryptor and the decryptor work for a namespace."
)
@click.option(
    "-n", "--namespace", required=True, help="Where a workload would run (the dry-run pod's)."
)
@click.option(
    "-a",
    "--service-account",
    required=True,
    help="The workload's service account (the dry-run pod runs as it).",
)
@click.option("--encryptor-url", envvar="KAMUS_ENCRYPTOR_URL", help="The encryptor's URL.")
@click.option("--decryptor-url", envvar="KAMUS_URL", help="The decryptor's URL (or $KAMUS_URL).")
@click.option(
    "--ca-bundle",
    envvar="KAMUS_CA_BUNDLE",
    type=click.Path(exists=True, dir_okay=False),
    help="CA certificates for https services (or $KAMUS_CA_BUNDLE).",
)
def doctor(
    namespace: str,
    service_account: str,
    encryptor_url: str | None,
    decryptor_url: str | None,
    ca_bundle: str | None,
) -> None:
    """Check, with the kubeconfig's credentials (or the pod's, in a cluster), that a pod in
    NAMESPACE running as SERVICE_ACCOUNT would get Kamus's init container (a server-side dry-run
    create: nothing is created), that the encryptor and the decryptor answer, and that you may
    encrypt for the namespace. One verdict per check; exits 1 if any FAILs.

    \b
    Examples:
      kamus doctor -n team-a -a api --encryptor-url https://kamus.example.com
    """
    from kamus.cli.doctor import run_doctor

    checks = run_doctor(namespace, service_account, encryptor_url, decryptor_url, ca_bundle)
    _finish([check.line() for check in checks], any(c.verdict == "FAIL" for c in checks))


@main.command(short_help="Open values with the break-glass age key, locally (disaster recovery).")
@click.argument("source", type=click.File("rb"), default="-")
@click.option(
    "-i",
    "--identity",
    "identities",
    multiple=True,
    required=True,
    type=click.Path(exists=True, dir_okay=False),
    help="An age identity file (age-keygen's AGE-SECRET-KEY-1… lines). Repeat it to bring "
    "the shares of a threshold value.",
)
@_options(*_output_options("the plaintext"))
@click.option(
    "--force", is_flag=True, help="Write plaintext to a terminal (it may stay in its scrollback)."
)
def recover(
    source: BinaryIO,
    identities: tuple[str, ...],
    output: str | None,
    overwrite: bool,
    force: bool,
) -> None:
    """Open the values in SOURCE (a file, or '-' for stdin) with the break-glass age key, with
    no cluster: a raw ciphertext becomes its plaintext, a KamusSecret the Secret it stands for,
    a ConfigMap of ciphertexts its plain values. Only values sealed with an age recipient
    (--recipient age:…) open. For the disaster-recovery runbook (docs/disaster-recovery.md).

    \b
    Examples:
      kamus recover -i dr.agekey deploy/db-kamussecret.yaml -o db-secret.yaml
      kamus recover -i alice.agekey -i bob.agekey db-kamussecret.yaml | kubectl apply -f -
    """
    from kamus.cli.inputs import decode_text
    from kamus.cli.recipients import read_identities
    from kamus.cli.recover import recover as open_all

    name = str(getattr(source, "name", "-"))
    where = "stdin" if name in ("-", "<stdin>") else name
    try:
        if output is None and sys.stdout.isatty() and not force:
            raise UsageError(
                "refusing to write plaintext to a terminal: give -o FILE, pipe it to a command, "
                "or pass --force"
            )
        keys = read_identities(identities)
        plaintext = open_all(decode_text(source.read(), where), keys, where, _say)
        if output is None:
            sys.stdout.buffer.write(plaintext)
            sys.stdout.buffer.flush()
            return
        try:
            flags = os.O_WRONLY | os.O_CREAT | (os.O_TRUNC if overwrite else os.O_EXCL)
            with os.fdopen(os.open(output, flags, 0o600), "wb") as handle:
                handle.write(plaintext)
        except FileExistsError:
            raise UsageError(f"{output} exists; pass --overwrite to replace it") from None
        except OSError as exc:
            raise UsageError(f"cannot write {output}: {exc.strerror}") from None
        _say(f"wrote {output} (mode 0600)")
    except ClientError as error:
        _fail(error)


@main.group(short_help="Add or remove recipients of every value in files and directories.")
def recipients() -> None:
    """Add a cluster, a break-glass key or a KMS key to every m1 value of a tree, or remove
    one, keeping each value's payload, YAML comments, order and quoting.

    Offline, with --identity, the holder of the break-glass age key opens the values here and
    may add any recipient (they can read the values anyway). Through the decryptor (-u), only
    recipients the operator lists in Decryptor__AllowedRecipients may be added, and RBAC must
    let the caller update kamussecrets in each namespace. See docs/multi-cluster.md.
    """


_BUNDLE_PINS = click.option(
    "--trust-anchor",
    multiple=True,
    envvar="KAMUS_TRUST_ANCHOR",
    help="The pinned anchor of each --keys bundle (default: trust-anchor in .kamus.yaml).",
)


def _recipients_options(command: Callable[..., None]) -> Callable[..., None]:
    return _options(
        click.option(
            "--in-place",
            is_flag=True,
            help="Rewrite the files, each atomically (default: dry run).",
        ),
        click.option(
            "-i",
            "--identity",
            "identities",
            multiple=True,
            type=click.Path(exists=True, dir_okay=False),
            help="Work offline, opening the values with this age identity file (the "
            "break-glass key); no decryptor is contacted.",
        ),
        _tree_options,
    )(command)


def _change_recipients(
    paths: tuple[str, ...],
    namespace: str | None,
    service_account: str | None,
    in_place: bool,
    identities: tuple[str, ...],
    connection: dict[str, Any],
    *,
    add: list[Any],
    add_names: list[str],
    bundles: list[str],
    remove: list[str],
) -> None:
    from kamus.cli.rewrap import ask_decryptor, change_offline, report, write_files
    from kamus.cli.tree import scan

    found = scan(paths, namespace=namespace, service_account=service_account)
    for skipped in found.skipped:
        _say(f"{skipped.file}:{skipped.line}: skipped: {skipped.reason}")
    if identities:
        import asyncio

        from kamus.cli.recipients import read_identities

        keys = read_identities(identities)
        with asyncio.Runner() as runner:
            results = change_offline(found, keys, add, remove, runner.run)
        if not in_place:  # a dry run reports what would change
            results = {
                k: replace(o, status="stale", new=None) if o.status == "rewrapped" else o
                for k, o in results.items()
            }
    else:
        body = {"addRecipients": add_names, "addBundles": bundles, "removeRecipients": remove}
        with _decryptor_client(**connection) as client:
            results = ask_decryptor(client, found, check=not in_place, recipients=body)
    written, untouched = write_files(found, results) if in_place else ([], [])
    outcome = report(
        found,
        results,
        mode="in-place" if in_place else "dry-run",
        written=written,
        untouched=untouched,
        recipients=True,
    )
    _finish(outcome.lines, bool(outcome.failed))


@recipients.command("add", short_help="Add recipients to every value in files and directories.")
@click.option(
    "--keys",
    multiple=True,
    help="A cluster to add: its key bundle, a file or an https URL. Repeatable.",
)
@click.option(
    "--recipient",
    "added",
    multiple=True,
    help="A recipient to add: age:age1…, aws:<key ARN>, gcp:<CryptoKey name>, azure:<key URL>. "
    "Repeatable.",
)
@_options(_BUNDLE_PINS)
@_recipients_options
def recipients_add(
    paths: tuple[str, ...],
    keys: tuple[str, ...],
    added: tuple[str, ...],
    trust_anchor: tuple[str, ...],
    in_place: bool,
    identities: tuple[str, ...],
    namespace: str | None,
    service_account: str | None,
    **connection: Any,
) -> None:
    """Add recipients to every m1 value in PATHS (KamusSecrets, ConfigMaps of ciphertexts, raw
    ciphertext files; directories are walked). A value that has them already is left alone.

    \b
    Examples:
      kamus recipients add deploy/ --keys .kamus/us.json -i dr.agekey --in-place
      kamus recipients add deploy/ --recipient age:age1… -u http://127.0.0.1:9091 \\
        --allow-insecure-url --allow-token-over-http --kubeconfig-token --in-place
    """
    from kamus.cli.keys import pins_of
    from kamus.cli.recipients import Choice, load_pinned, prepare

    try:
        if not keys and not added:
            raise UsageError("name what to add: --keys FILE|URL, or --recipient")
        pins = pins_of(trust_anchor)
        connect = _bundle_client(connection)
        if identities:
            from kamus.cli.keys import now

            sealing = prepare(
                Choice.of_options(keys, added, None),
                pins,
                connect,
                _say,
                when=now(),
                allow_expired=False,
                post_quantum=False,
            )
            sealing.close()
            add = [r for group in sealing.groups for r in group]
            bundles: list[str] = []
        else:
            Choice.of_options(keys, added, None)  # the same checks of each name
            add = []
            bundles = [load_pinned(k, pins, connect, _say).text for k in keys]
        _change_recipients(
            paths,
            namespace,
            service_account,
            in_place,
            identities,
            connection,
            add=add,
            add_names=list(added),
            bundles=bundles,
            remove=[],
        )
    except ClientError as error:
        _fail(error)


@recipients.command(
    "remove", short_help="Remove recipients from every value in files and directories."
)
@click.option(
    "--recipient",
    "removed",
    multiple=True,
    help="What to remove, as <kind>:<key id> (* matches anything): age:age1…, age:*, "
    "hpke-x25519:x25519:g3:*, aws:arn:aws:kms:eu-west-1:*. Repeatable.",
)
@click.option(
    "--keys",
    multiple=True,
    help="A cluster to remove: its key bundle (a file or an https URL); every stanza for a key "
    "the bundle lists goes. Repeatable.",
)
@_options(_BUNDLE_PINS)
@_recipients_options
def recipients_remove(
    paths: tuple[str, ...],
    removed: tuple[str, ...],
    keys: tuple[str, ...],
    trust_anchor: tuple[str, ...],
    in_place: bool,
    identities: tuple[str, ...],
    namespace: str | None,
    service_account: str | None,
    **connection: Any,
) -> None:
    """Remove the stanzas matching --recipient, or those for the keys a cluster's bundle lists
    (--keys), from every m1 value in PATHS. A value is never left without a recipient, and a
    value that has none of them is left alone.

    A bundle lists its cluster's previous, active and next keys: values sealed to an older
    generation still carry a stanza for it; remove those by --recipient with their key ids.

    \b
    Examples:
      kamus recipients remove deploy/ --recipient 'age:*' -i dr.agekey --in-place
      kamus recipients remove deploy/ --keys lost-cluster.json -i dr.agekey --in-place
    """
    from kamus.cli.keys import pins_of
    from kamus.cli.recipients import load_pinned

    try:
        if not removed and not keys:
            raise UsageError("name what to remove: --recipient PATTERN, or --keys FILE|URL")
        pins = pins_of(trust_anchor)
        connect = _bundle_client(connection)
        removed += tuple(
            f"{key.suite.stanza_kind}:{key.kid}"
            for source in keys
            for key in load_pinned(source, pins, connect, _say).keys
        )
        _change_recipients(
            paths,
            namespace,
            service_account,
            in_place,
            identities,
            connection,
            add=[],
            add_names=[],
            bundles=[],
            remove=list(removed),
        )
    except ClientError as error:
        _fail(error)


def _bundle_client(connection: Mapping[str, Any]) -> Callable[[str], KamusClient]:
    def connect(url: str) -> KamusClient:  # the bundle is public: no token goes there
        return KamusClient(
            url,
            allow_insecure=connection["allow_insecure_url"],
            fingerprint=connection["cert_fingerprint"],
            ca_bundle=connection["ca_bundle"],
            timeout=connection["timeout"],
        )

    return connect
