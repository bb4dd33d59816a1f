"""``kamus rewrap`` and ``kamus verify``: every ciphertext in a tree of manifests moved to the
active key, or checked, with no plaintext ever reaching this machine (docs/rotation.md).

* ``--dry-run`` and ``--in-place`` send the values to the decryptor's ``POST /api/v2/rewrap``
  (check mode for a dry run), grouped by the identity each is bound to. ``--in-place`` then
  writes each file whose values all came back, atomically (kamus/cli/tree.py): a file with any
  failure stays as it was, and an interrupted run leaves every file old or new.
* ``--check`` needs no decryptor: the key ids are in the values, and which keys are active is in
  the cluster's signed key bundle (``--keys``). A GitOps gate: it exits 1 when a value is under a
  key that is not active, or in a format older than ``m1``.
* ``kamus verify`` asks the decryptor whether each value opens for its identity (the rewrap
  endpoint's check mode): sealed-secrets' ``--validate``, for a whole tree.
"""

import json
from collections import Counter
from collections.abc import Callable, Coroutine, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from crypto import m1
from crypto.bundle import Bundle
from crypto.errors import DecryptionError, MalformedCiphertext
from crypto.formats import CiphertextFormat
from crypto.lifecycle import named_key_ids
from crypto.recipients import (
    KMS_KINDS,
    AgeIdentities,
    Recipient,
    not_present,
    open_offline,
    restanza,
)
from crypto.sealing import KeyState, only_m1
from kamus.cli.client import (
    KamusClient,
    ServerError,
    post_within_rate_limit,
    server_message,
)
from kamus.cli.tree import Found, Scan

REWRAP_PATH = "/api/v2/rewrap"
# Values per request: small enough that one request ends well within --timeout when each value
# costs KMS calls (three, after an AWS key moved), large enough to cost one TokenReview per 100.
BATCH = 100

NOT_ROTATION = (
    "rewrap moves values to the active key; it does not change the secrets themselves: a secret "
    "that leaked must be changed at its source and encrypted again"
)

Status = Literal["rewrapped", "unchanged", "stale", "failed"]
Say = Callable[[str], None]


@dataclass(frozen=True)
class Outcome:
    status: Status
    source: str = ""
    target: str = ""
    new: str | None = None
    reason: str = ""


Results = dict[tuple[int, int], Outcome]  # (file index in the scan, Found.key) -> outcome


def _values(scan: Scan) -> Iterator[tuple[int, Found]]:
    for index, file in enumerate(scan.files):
        for found in file.values:
            yield index, found


def _batches(scan: Scan, size: int) -> Iterator[tuple[str, list[tuple[int, Found]]]]:
    """The values grouped by identity, in requests of at most ``size`` items."""
    by_identity: dict[str, list[tuple[int, Found]]] = {}
    for index, found in _values(scan):
        by_identity.setdefault(found.identity, []).append((index, found))
    for identity in sorted(by_identity):
        values = by_identity[identity]
        for start in range(0, len(values), size):
            yield identity, values[start : start + size]


def ask_decryptor(
    client: KamusClient,
    scan: Scan,
    *,
    check: bool,
    upgrade_legacy: bool = False,
    batch_size: int = BATCH,
    recipients: Mapping[str, list[str]] | None = None,
) -> Results:
    """Each value's outcome from the decryptor. A request refused for its identity (RBAC, a bad
    name) fails its values only; one refused for every request (the token, the rate, an
    outage) raises."""
    results: Results = {}
    for identity, batch in _batches(scan, batch_size):
        namespace, _, service_account = identity.partition(":")
        body = {
            "namespace": namespace,
            "serviceAccount": service_account,
            "items": {str(n): found.ciphertext for n, (_, found) in enumerate(batch)},
            "upgradeLegacy": upgrade_legacy,
            "check": check,
            **(recipients or {}),
        }
        status, answer = post_within_rate_limit(client, REWRAP_PATH, body)
        if status in (404, 405):
            raise ServerError(
                status,
                f"{client.url} has no rewrap API (it answered {status} to {REWRAP_PATH}): give "
                "the URL of a Kamus decryptor that has it (kubectl port-forward "
                "svc/<release>-decryptor 9091:80, then -u http://127.0.0.1:9091 "
                "--allow-insecure-url --allow-token-over-http)",
            )
        if status in (400, 403, 413):
            # This identity's request was refused (RBAC in its namespace, say): its values
            # fail, and the other namespaces' go on.
            reason = server_message(status, answer)
            for index, found in batch:
                results[index, found.key] = Outcome("failed", reason=reason)
            continue
        if status != 200:
            raise ServerError(status, server_message(status, answer))
        items = json.loads(answer)["items"]
        for n, (index, found) in enumerate(batch):
            item = items.get(str(n)) or {}
            if "error" in item or "status" not in item:
                outcome = Outcome("failed", reason=str(item.get("error", "no answer")))
            else:
                outcome = Outcome(
                    item["status"],
                    item.get("keyId", ""),
                    item.get("targetKeyId", ""),
                    item.get("data"),
                )
            results[index, found.key] = outcome
    return results


def change_offline(
    scan: Scan,
    identities: AgeIdentities,
    add: Sequence[Recipient],
    remove: Sequence[str],
    run: Callable[[Coroutine[Any, Any, list[m1.Stanza]]], list[m1.Stanza]],
) -> Results:
    """Each value with recipients added or removed here, opened with the break-glass age
    identities: their holder can read the values anyway, so may give them to anyone."""
    results: Results = {}
    for index, found in _values(scan):
        try:
            value = only_m1(found.ciphertext)
            opened = open_offline(value, identities)
            if opened.sa_id != found.identity:
                raise DecryptionError(
                    f"it was made for {opened.sa_id}, not {found.identity} as its manifest says"
                )
            stanzas = run(_wrap_all(not_present(value, add), opened.data_key, opened.sa_id))
            new = restanza(value, opened, add=stanzas, remove=remove)
        except MalformedCiphertext as exc:
            results[index, found.key] = Outcome("failed", reason=exc.fact)
            continue
        except DecryptionError as exc:
            shown = str(exc) if type(exc) is not DecryptionError else exc.reason
            results[index, found.key] = Outcome("failed", reason=shown)
            continue
        except ValueError as exc:
            results[index, found.key] = Outcome("failed", reason=str(exc))
            continue
        source = opened.used[0].name if opened.used else ""
        status: Status = "unchanged" if new is None else "rewrapped"
        results[index, found.key] = Outcome(status, source, source, new)
    return results


async def _wrap_all(add: Sequence[Recipient], data_key: bytes, sa_id: str) -> list[m1.Stanza]:
    return [await r.wrap(data_key, sa_id) for r in add]


def check_against(scan: Scan, loaded: Bundle) -> Results:
    """Each value judged from its shape against the bundle: current when it names an active
    (or next) sealing key, or a KMS key (whose versions only the decryptor can judge)."""
    states = {key.kid: key.state for key in loaded.keys}
    current = {kid for kid, state in states.items() if state is not KeyState.DECRYPT_ONLY}
    results: Results = {}
    for index, found in _values(scan):
        try:
            fmt, named = named_key_ids(found.ciphertext)
        except MalformedCiphertext:
            results[index, found.key] = Outcome("failed", reason="not a Kamus ciphertext")
            continue
        results[index, found.key] = _judge(fmt, named, states, current)
    return results


def _judge(
    fmt: CiphertextFormat,
    named: tuple[tuple[str, str], ...],
    states: dict[str, KeyState],
    current: set[str],
) -> Outcome:
    if fmt.is_legacy:
        return Outcome(
            "stale", "legacy", reason=f"a Kamus value ({fmt}): kamus rewrap [--upgrade-legacy]"
        )
    if fmt is not CiphertextFormat.SEALED_V1:
        source = named[0][1] if named else ""
        return Outcome("stale", source, reason=f"format {fmt}: the active format is kamus-m1")
    for kind, kid in named:
        if kid in current or kind in KMS_KINDS:
            return Outcome("unchanged", kid, kid)
    sealing = [kid for kind, kid in named if kind.startswith("hpke-")]
    source = sealing[0] if sealing else named[0][1]
    if source in states:
        reason = f"sealed to {source}, which the key bundle lists as decrypt-only"
    else:
        reason = (
            f"sealed to {source}, which the key bundle does not list (an older generation, or "
            "another cluster's key)"
        )
    return Outcome("stale", source, reason=reason)


@dataclass(frozen=True)
class Report:
    lines: list[str]
    failed: int
    stale: int
    written: list[Path]


def write_files(scan: Scan, results: Results) -> tuple[list[Path], list[Path]]:
    """Write each file whose values all came back; the others stay untouched."""
    written: list[Path] = []
    untouched: list[Path] = []
    for index, file in enumerate(scan.files):
        outcomes = [results.get((index, found.key)) for found in file.values]
        if file.problems or any(o is None or o.status == "failed" for o in outcomes):
            untouched.append(file.path)
            continue
        replacements = {
            found.key: outcome.new
            for found, outcome in zip(file.values, outcomes, strict=True)
            if outcome is not None and outcome.status == "rewrapped" and outcome.new
        }
        if replacements:
            file.write(replacements)
            written.append(file.path)
    return written, untouched


def report(
    scan: Scan,
    results: Results,
    *,
    mode: Literal["check", "dry-run", "in-place", "verify"],
    written: Sequence[Path] = (),
    untouched: Sequence[Path] = (),
    recipients: bool = False,
) -> Report:
    """By file:line, every value that is not current or failed; then the counts per source key
    id → target, and the files written or left alone."""
    lines: list[str] = []
    moves: Counter[tuple[str, str]] = Counter()
    statuses: Counter[str] = Counter()
    for index, found in _values(scan):
        outcome = results.get((index, found.key), Outcome("failed", reason="not sent"))
        statuses[outcome.status] += 1
        where = f"{found.file}:{found.line}: {found.where}"
        if outcome.status == "failed":
            lines.append(f"{where}: failed: {outcome.reason}")
        elif outcome.status in ("stale", "rewrapped"):
            if not recipients:
                moves[outcome.source or "?", outcome.target or "?"] += 1
            verb = {"stale": "would rewrap", "rewrapped": "rewrapped"}[outcome.status]
            if recipients:
                verb = {"stale": "would change", "rewrapped": "changed"}[outcome.status]
                lines.append(f"{where}: recipients {verb} (opened with {outcome.source})")
            elif mode == "check":
                lines.append(f"{where}: not current: {outcome.reason}")
            elif mode == "verify":
                lines.append(f"{where}: opens; a rewrap would move it to {outcome.target}")
            else:
                lines.append(f"{where}: {verb} {outcome.source} -> {outcome.target}")
    for file in scan.files:
        for problem in file.problems:
            statuses["failed"] += 1
            lines.append(f"{problem.file}:{problem.line}: {problem.where}: {problem.reason}")
    lines.append("")
    total = sum(statuses.values())
    if mode == "check":
        current = statuses["unchanged"]
        lines.append(f"{total} values: {current} current, {statuses['stale']} not current")
    elif mode == "verify":
        opened = statuses["unchanged"] + statuses["stale"]
        lines.append(f"{total} values: {opened} open for their identity")
    else:
        counts = ", ".join(
            f"{statuses[s]} {label}"
            for s, label in (
                ("rewrapped", "rewrapped"),
                ("stale", "to rewrap"),
                ("unchanged", "unchanged"),
            )
            if statuses[s]
        )
        lines.append(f"{total} values: {counts or 'none to rewrap'}")
    if statuses["failed"]:
        lines[-1] += f", {statuses['failed']} failed"
    for (source, target), count in sorted(moves.items()):
        lines.append(f"  {source} -> {target}: {count}")
    if mode == "in-place":
        lines.append(f"{len(written)} files written")
        if untouched:
            lines.append(
                f"{len(untouched)} files left untouched because a value in them failed: "
                + ", ".join(str(p) for p in untouched)
            )
    if (
        mode in ("dry-run", "in-place")
        and not recipients
        and (statuses["stale"] or statuses["rewrapped"])
    ):
        lines.append(NOT_ROTATION)
    return Report(lines, statuses["failed"], statuses["stale"], list(written))
