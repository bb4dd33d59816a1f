"""The commands over files and directories of a git tree: ``rewrap``, ``verify`` and
``recipients add|remove`` (through the decryptor, or offline with the break-glass key), and
``recover``. Their machinery is in :mod:`kamus.cli.tree` and :mod:`kamus.cli.rewrap`; like every
command, they import it only when they run."""

import os
import sys
from collections.abc import Callable
from dataclasses import replace
from typing import TYPE_CHECKING, Any, BinaryIO

import click

from kamus.cli.client import ClientError, UsageError
from kamus.cli.options import (
    BUNDLE_PINS,
    TRUST_ANCHOR,
    apply_options,
    bundle_client,
    decryptor_client,
    fail,
    finish,
    output_options,
    say,
    tree_options,
)

if TYPE_CHECKING:
    from kamus.cli.tree import Scan


def _scan(paths: tuple[str, ...], namespace: str | None, service_account: str | None) -> "Scan":
    """The values in ``paths``; what was skipped, and why, goes to stderr."""
    from kamus.cli.tree import scan

    found = scan(paths, namespace=namespace, service_account=service_account)
    for skipped in found.skipped:
        say(f"{skipped.file}:{skipped.line}: skipped: {skipped.reason}")
    return found


@click.command(short_help="Move every ciphertext in files and directories to the active key.")
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
@apply_options(TRUST_ANCHOR)
@tree_options
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

    try:
        found = _scan(paths, namespace, service_account)
        if mode == "check":
            if not keys:
                raise UsageError(
                    "--check needs the cluster's key bundle: --keys FILE|URL (or $KAMUS_KEYS), "
                    "e.g. from kamus keys fetch"
                )
            from kamus.cli.keys import find_pin, load_verified

            loaded = load_verified(keys, find_pin(trust_anchor), bundle_client(connection), say)
            outcome = report(found, check_against(found, loaded), mode="check")
            finish(outcome.lines, bool(outcome.failed or outcome.stale))
            return
        in_place = mode == "in-place"
        with decryptor_client(**connection) as client:
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
        finish(outcome.lines, bool(outcome.failed))
    except ClientError as error:
        fail(error)


@click.command(short_help="Check that every ciphertext in files and directories opens.")
@tree_options
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

    try:
        found = _scan(paths, namespace, service_account)
        with decryptor_client(**connection) as client:
            results = ask_decryptor(client, found, check=True)
        outcome = report(found, results, mode="verify")
        finish(outcome.lines, bool(outcome.failed))
    except ClientError as error:
        fail(error)


@click.command(short_help="Open values with the break-glass age key, locally (disaster recovery).")
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
@apply_options(*output_options("the plaintext"))
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
        plaintext = open_all(decode_text(source.read(), where), keys, where, say)
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
        say(f"wrote {output} (mode 0600)")
    except ClientError as error:
        fail(error)


@click.group(short_help="Add or remove recipients of every value in files and directories.")
def recipients() -> None:
    """Add a cluster, a break-glass key or a KMS key to every m1 value of a tree, or remove
    one, keeping each value's payload, YAML comments, order and quoting.

    Offline, with --identity, the holder of the break-glass age key opens the values here and
    may add any recipient (they can read the values anyway). Through the decryptor (-u), only
    recipients the operator lists in Decryptor__AllowedRecipients may be added, and RBAC must
    let the caller update kamussecrets in each namespace. See docs/multi-cluster.md.
    """


def _recipients_options(command: Callable[..., None]) -> Callable[..., None]:
    return apply_options(
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
        tree_options,
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

    found = _scan(paths, namespace, service_account)
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
        with decryptor_client(**connection) as client:
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
    finish(outcome.lines, bool(outcome.failed))


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
@apply_options(BUNDLE_PINS)
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
        connect = bundle_client(connection)
        if identities:
            from kamus.cli.keys import now

            sealing = prepare(
                Choice.of_options(keys, added, None),
                pins,
                connect,
                say,
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
            bundles = [load_pinned(k, pins, connect, say).text for k in keys]
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
        fail(error)


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
@apply_options(BUNDLE_PINS)
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
        connect = bundle_client(connection)
        removed += tuple(
            f"{key.suite.stanza_kind}:{key.kid}"
            for source in keys
            for key in load_pinned(source, pins, connect, say).keys
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
        fail(error)
