"""What the client commands share: their options (how to reach the encryptor or the decryptor,
with which token, where the output goes), and how they report. Each command lives in
:mod:`kamus.cli.main` or :mod:`kamus.cli.tree_commands`."""

import functools
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import click
from click.core import ParameterSource

from kamus.cli.client import ClientError, KamusClient, UsageError

if TYPE_CHECKING:
    from kamus.cli.recipients import Sealing


def fail(error: ClientError) -> NoReturn:
    click.echo(f"kamus: {error}", err=True)
    sys.exit(error.exit_code)


def secret_text(secret: str | None, secret_file: str | None, encoding: str) -> str:
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


def write_output(text: str, output: str | None, overwrite: bool) -> None:
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


def user_token(
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
        token = user_token(
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
            say,
            when=now(),
            allow_expired=self.allow_expired_keys,
            post_quantum=self.post_quantum,
        )


def say(message: str) -> None:
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


def apply_options(
    *options: Callable[[Any], Any],
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Apply click options in the order they are listed (which is the order --help shows)."""

    def decorate(command: Callable[..., Any]) -> Callable[..., Any]:
        for option in reversed(options):
            command = option(command)
        return command

    return decorate


def tls_options(what: str, server: str = "the encryptor") -> list[Callable[[Any], Any]]:
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


def token_options(kubeconfig_help: str, token_file_more: str = "") -> list[Callable[[Any], Any]]:
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


def output_options(what: str) -> list[Callable[[Any], Any]]:
    return [
        click.option("-o", "--output", help=f"Write {what} to this file instead of stdout."),
        click.option("-O", "--overwrite", is_flag=True, help="Replace --output if it exists."),
    ]


TRUST_ANCHOR = click.option(
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
            fail(error)
        command(connection=connection, offline=offline, **options)

    tls = tls_options("secrets")
    return apply_options(
        click.option(
            "-u",
            "--kamus-url",
            envvar="KAMUS_URL",
            help="The encryptor's URL (or $KAMUS_URL); not with --offline.",
        ),
        *tls[:3],
        *token_options(
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
        *output_options("the result"),
        click.option(
            "--log-level",
            type=click.Choice(["debug", "info", "warn", "error"], case_sensitive=False),
            default="info",
            show_default=True,
            help="How much the command says on stderr (warn or error: only problems).",
        ),
    )(with_connection)


def tree_options(command: Callable[..., None]) -> Callable[..., None]:
    """What ``rewrap`` and ``verify`` share: the tree, the identity's fallbacks, and how to reach
    the decryptor with the caller's Kubernetes token."""
    tls = tls_options("values and your token", "the decryptor")
    return apply_options(
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
        *token_options(
            "Send the current kubeconfig user's token (RBAC must let it update kamussecrets "
            "in each namespace).",
        ),
        tls[3],
    )(command)


def decryptor_client(
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
    token = user_token(
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


def finish(lines: list[str], failed: bool) -> None:
    click.echo("\n".join(lines))
    if failed:
        sys.exit(1)


BUNDLE_PINS = click.option(
    "--trust-anchor",
    multiple=True,
    envvar="KAMUS_TRUST_ANCHOR",
    help="The pinned anchor of each --keys bundle (default: trust-anchor in .kamus.yaml).",
)


def bundle_client(connection: Mapping[str, Any]) -> Callable[[str], KamusClient]:
    def connect(url: str) -> KamusClient:  # the bundle is public: no token goes there
        return KamusClient(
            url,
            allow_insecure=connection["allow_insecure_url"],
            fingerprint=connection["cert_fingerprint"],
            ca_bundle=connection["ca_bundle"],
            timeout=connection["timeout"],
        )

    return connect
