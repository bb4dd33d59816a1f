"""The ``kamus`` command."""

import contextlib
import os
import signal
import ssl
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import BinaryIO

import click
from click.core import ParameterSource

from kamus import __version__
from kamus.cli.client import ClientError, UsageError
from kamus.cli.formats import FORMATS
from kamus.cli.keysecret import create_key_secret
from kamus.cli.options import (
    TRUST_ANCHOR,
    Connection,
    Offline,
    apply_options,
    client_options,
    fail,
    finish,
    output_options,
    say,
    secret_text,
    tls_options,
    write_output,
)
from kamus.cli.settings import load_settings
from kamus.cli.tree_commands import recipients, recover, rewrap, verify
from kamus.server.logs import configure_logging
from kamus.server.services import NAMES, SERVICES, Service, ServiceName

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
        text = secret_text(secret, secret_file, secret_file_encoding)
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
        write_output(ciphertext, output, overwrite)
    except ClientError as error:
        fail(error)


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
        write_output(sealed.rstrip("\n"), output, overwrite)
    except ClientError as error:
        fail(error)


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
@apply_options(*output_options("the bundle"))
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
        write_output(text if output else text.rstrip("\n"), output, overwrite)
    except ConfigurationError as exc:
        fail(ClientError(f"cannot export the key bundle: {exc}"))
    except KeyManagerUnavailable as exc:
        fail(ClientError(f"cannot export the key bundle: {exc.reason}"))
    except ClientError as error:
        fail(error)


@keys.command("fetch", short_help="Download the key bundle from an encryptor and check it.")
@apply_options(
    click.option(
        "-u",
        "--kamus-url",
        envvar="KAMUS_URL",
        required=True,
        help="The encryptor's URL (or $KAMUS_URL); the bundle is at /api/v2/keys.",
    ),
    *tls_options("the keys")[:3],
    TRUST_ANCHOR,
    tls_options("the keys")[3],
    *output_options("the bundle"),
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
        loaded = verified(text, pin, kamus_url, say)
        check_expiry(loaded, now(), say, allow_expired=False, refuse=False)
        write_output(loaded.text if output else loaded.text.rstrip("\n"), output, overwrite)
        if pin is None:
            say(
                f"first use: nothing pins this bundle's anchor {loaded.anchor}. Check that "
                "fingerprint with your cluster's operator (kamus keys export | kamus keys verify "
                f"- on their side), then {how_to_pin(loaded.anchor)}"
            )
        else:
            say(f"the bundle is signed by the pinned anchor ({pin.source})")
    except ClientError as error:
        fail(error)


@keys.command("verify", short_help="Check a key bundle file and show its keys.")
@click.argument("file")
@apply_options(TRUST_ANCHOR)
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
        loaded = verified(text, pin, source, say)
        click.echo(describe(loaded))
        if pin is None:
            say(f"nothing pins the anchor; to trust it, {how_to_pin(loaded.anchor)}")
        if check_expiry(loaded, now(), say, allow_expired=False, refuse=False):
            raise BundleRefused(f"the key bundle {source} has expired")
    except ClientError as error:
        fail(error)


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
        fail(error)


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
    finish([check.line() for check in checks], any(c.verdict == "FAIL" for c in checks))


main.add_command(rewrap)
main.add_command(verify)
main.add_command(recover)
main.add_command(recipients)
