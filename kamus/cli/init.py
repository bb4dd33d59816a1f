"""``kamus init``: the init container. Decrypts the ciphertexts mounted from ConfigMaps into
files on an in-memory volume, in Kamus's output formats (plus ``env``).

Everything is decrypted before anything is written, and every file is written atomically, so a
failure leaves no partial output. Secret values are never printed.
"""

import base64
import hashlib
import json
import os
import re
import string
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jinja2 import StrictUndefined, TemplateSyntaxError, UndefinedError
from jinja2.exceptions import SecurityError
from jinja2.sandbox import ImmutableSandboxedEnvironment

from kamus.cli.client import (
    ClientError,
    KamusClient,
    NetworkError,
    server_message,
    with_retries,
    wrong_service,
)
from kamus.cli.formats import FORMATS, TEMPLATE_FILE
from kamus.cli.inputs import InputError, decode_text, json_document

DEFAULT_TOKEN_FILE = "/var/run/secrets/kubernetes.io/serviceaccount/token"  # noqa: S105 - a path

Secret = str | dict[str, Any] | list[Any]


class InitError(ClientError):
    pass


class _Unavailable(Exception):
    """A 503: the decryptor (or what it depends on) is not ready yet, or its KMS is throttling;
    worth retrying, after the answer's ``Retry-After`` (in seconds) when it has one."""

    def __init__(self, message: str, retry_after: str | None) -> None:
        super().__init__(message)
        seconds = (retry_after or "").strip()
        self.retry_after = int(seconds) if seconds.isascii() and seconds.isdigit() else None


@dataclass(frozen=True)
class InitOptions:
    folders: list[Path]
    output_dir: Path
    file_name: str | None
    output_format: str
    url: str
    token_file: Path
    timeout: float = 60.0
    file_mode: int = 0o600
    ca_bundle: str | None = None
    ca_data: str | None = None  # PEM text ($KAMUS_CA_CERT, set by the injector)


def log(message: str) -> None:
    print(f"kamus init: {message}", file=sys.stderr, flush=True)


# -- reading ---------------------------------------------------------------------------------


def collect(folders: list[Path], output_format: str) -> tuple[dict[str, Path], str | None]:
    """The encrypted files by secret name, and the custom template if there is one.

    A ConfigMap mount holds ``..data``, ``..2024_…`` and other hidden entries beside one symlink
    per key: only the visible files are secrets.
    """
    files: dict[str, Path] = {}
    template = None
    for folder in folders:
        if not folder.is_dir():
            raise InitError(f"the encrypted folder {folder} does not exist")
        for path in sorted(folder.iterdir()):
            if path.name.startswith(".") or not path.is_file():
                continue
            if path.name == TEMPLATE_FILE and output_format == "custom":
                template = _read_text(path)
                continue
            if path.name in files:
                log(f"{path.name} is in more than one folder; using {path}")
            files[path.name] = path
    return files, template


def _read_text(path: Path) -> str:
    try:
        return decode_text(path.read_bytes(), str(path))
    except InputError as exc:
        raise InitError(str(exc)) from None


def interpret(plaintext: str) -> Secret:
    """A value that is a JSON object or array is embedded as JSON; anything else is a string
    (Kamus's rule: its client parsed each answer, and only objects stayed structured)."""
    try:
        value = json.loads(plaintext)
    except ValueError:
        return plaintext
    return value if isinstance(value, dict | list) else plaintext


# -- decrypting ------------------------------------------------------------------------------


# -- made for another identity? ----------------------------------------------------------------
#
# An m1 value names the identity it was sealed for by a tag (docs/ciphertext-format.md), and the
# pod's token names the pod's. Comparing them before any network call turns Kamus users' most
# common mistake (a value sealed for another service account) into an error that says so. Both
# are public; the decryptor decides anyway. Written out here rather than imported from crypto:
# crypto's import costs every pod start about 45 ms (tests/unit/test_cli_identity.py checks the
# two agree).


def token_identity(token: str) -> str | None:
    """``namespace:service-account`` from a service account token's claims, unverified (a
    hint only), or None for a token that does not say."""
    parts = token.split(".")
    if len(parts) != 3:
        return None
    try:
        claims = json.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
    except (ValueError, UnicodeDecodeError):
        return None
    subject = claims.get("sub") if isinstance(claims, dict) else None
    prefix = "system:serviceaccount:"
    if not isinstance(subject, str) or not subject.startswith(prefix):
        return None
    namespace, sep, name = subject[len(prefix) :].partition(":")
    return f"{namespace}:{name}" if sep and namespace and name and ":" not in name else None


def identity_tag(sa_id: str) -> str:
    namespace, _, name = sa_id.partition(":")
    return hashlib.sha256(f"kamus-id\x00{namespace}\x00{name}".encode()).hexdigest()[:8]


def sealed_tag(ciphertext: str) -> str | None:
    """The identity tag of an m1 value, or None for any other value (or a damaged one)."""
    if not ciphertext.startswith("kamus$m1$"):
        return None
    header = ciphertext.split("$", 3)[2]
    try:
        decoded = json.loads(base64.urlsafe_b64decode(header + "=" * (-len(header) % 4)))
    except (ValueError, UnicodeDecodeError):
        return None
    tag = decoded.get("id") if isinstance(decoded, dict) else None
    return tag if isinstance(tag, str) else None


def check_identity(files: Mapping[str, Path], ciphertexts: Mapping[str, str], token: str) -> None:
    identity = token_identity(token)
    if identity is None:
        return
    mine = identity_tag(identity)
    others = [
        str(files[name])
        for name, text in ciphertexts.items()
        if (tag := sealed_tag(text)) is not None and tag != mine
    ]
    if others:
        namespace, _, name = identity.partition(":")
        one = len(others) == 1
        raise InitError(
            f"{', '.join(others)} {'was' if one else 'were'} sealed for another service account "
            f"than this pod's, {identity}: seal {'it' if one else 'them'} for {identity} "
            f"(kamus seal -a {name} -n {namespace}); nothing was sent"
        )


def _decrypt_batch(
    client: KamusClient,
    headers: dict[str, str],
    files: Mapping[str, Path],
    ciphertexts: dict[str, str],
) -> dict[str, str] | None:
    """All values in one call, or None if this decryptor has no batch API (original Kamus)."""
    if not client.batch_api:
        return None
    status, body = client.post("/api/v2/decrypt", {"items": ciphertexts}, headers)
    if status in (404, 405):
        client.batch_api = False
        return None
    if status == 503:
        raise _Unavailable(server_message(status, body), client.retry_after)
    if status != 200:
        names = ", ".join(str(files[n]) for n in ciphertexts)
        raise InitError(
            f"decrypting {names} failed: the server answered {status}: "
            f"{server_message(status, body)}"
        )
    items = _batch_items(body, ciphertexts)
    failed = [f"{files[n]}: {items[n].get('error')}" for n in ciphertexts if "data" not in items[n]]
    if failed:  # a failed item is what v1 answers with a 400
        raise InitError("cannot decrypt " + "; ".join(failed) + " (the server answered 400)")
    return {name: items[name]["data"] for name in ciphertexts}


def _batch_items(body: bytes, names: Mapping[str, str]) -> dict[str, dict[str, str]]:
    """The items of a batch answer, checked: it holds plaintexts, so an error about it (cut
    short by a proxy, say) names the place and never quotes it."""
    source = "the decryptor's answer to /api/v2/decrypt"
    try:
        answer = json_document(body, source)
    except InputError as exc:
        raise InitError(str(exc)) from None
    items = answer.get("items") if isinstance(answer, dict) else None
    if not isinstance(items, dict) or not all(
        isinstance(item := items.get(n), dict)
        and (isinstance(item.get("data"), str) or "error" in item)
        for n in names
    ):
        raise InitError(f"{source} is not a batch answer with an item for each file")
    return items


def _decrypt_one(client: KamusClient, headers: dict[str, str], path: Path, ciphertext: str) -> str:
    status, body = client.post("/api/v1/decrypt", {"data": ciphertext}, headers)
    if status == 503:
        raise _Unavailable(server_message(status, body), client.retry_after)
    if status == 404:
        # Asked only once the batch API was found missing (404 or 405): not a decryptor at all.
        raise wrong_service(client, "decryptor")
    if status != 200:
        raise InitError(
            f"cannot decrypt {path}: the server answered {status}: {server_message(status, body)}"
        )
    try:
        return decode_text(body, f"the decrypted value of {path}")
    except InputError as exc:
        raise InitError(f"{exc}: kamus init writes text values only") from None


def decrypt_with(
    client: KamusClient,
    token: str,
    files: Mapping[str, Path],
    ciphertexts: Mapping[str, str],
    *,
    deadline: float,
    on_retry: Callable[[Exception, float], None],
) -> dict[str, str]:
    """The values, as kamus init asks for them: one v2 batch (one v1 call per value from a
    decryptor without it), retried on a 503 or a network error with jittered backoff, never
    sooner than the 503's ``Retry-After``, until ``deadline`` (a ``time.monotonic`` instant).
    The rollout benchmark (bench/rollout.py) sends its pods' requests through here too."""
    headers = {"Authorization": f"Bearer {token}"}

    def retryable(exc: Exception) -> bool:
        return isinstance(exc, _Unavailable | NetworkError)

    def asked_wait(exc: Exception) -> float | None:
        return exc.retry_after if isinstance(exc, _Unavailable) else None

    def attempt() -> dict[str, str]:
        batch = _decrypt_batch(client, headers, files, dict(ciphertexts))
        if batch is not None:
            return batch
        return {n: _decrypt_one(client, headers, files[n], c) for n, c in ciphertexts.items()}

    return with_retries(
        attempt, deadline=deadline, retryable=retryable, on_retry=on_retry, asked_wait=asked_wait
    )


def decrypt_all(options: InitOptions, files: Mapping[str, Path]) -> dict[str, str]:
    try:
        token = decode_text(options.token_file.read_bytes(), str(options.token_file)).strip()
    except OSError as exc:
        raise InitError(
            f"cannot read the service account token {options.token_file} ({exc.strerror}); "
            "set TOKEN_FILE_PATH or mount the token"
        ) from None
    except InputError as exc:
        raise InitError(f"{exc}: that is no service account token") from None
    # Surrounding whitespace is never part of a ciphertext (`kamus encrypt > file` ends the file
    # with a newline); ASCII whitespace only, as at the decryptor.
    ciphertexts = {name: _read_text(path).strip(string.whitespace) for name, path in files.items()}
    check_identity(files, ciphertexts, token)
    client = KamusClient(
        options.url, allow_insecure=True, ca_bundle=options.ca_bundle, ca_data=options.ca_data
    )

    def on_retry(exc: Exception, wait: float) -> None:
        log(f"the decryptor is not ready ({exc}); retrying in {wait:.1f}s")

    try:
        return decrypt_with(
            client,
            token,
            files,
            ciphertexts,
            deadline=time.monotonic() + options.timeout,
            on_retry=on_retry,
        )
    except _Unavailable as exc:
        raise InitError(
            f"the decryptor at {options.url} still answered 503 after {options.timeout:g}s: {exc}"
        ) from None
    finally:
        client.close()


# -- rendering -------------------------------------------------------------------------------


def compact(value: Secret) -> str:
    """Objects as compact JSON (as JavaScript's JSON.stringify), strings as they are."""
    if isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def env_name(key: str) -> str:
    """A shell variable name for a secret: ``db-password`` → ``DB_PASSWORD``."""
    name = "".join(c if c.isascii() and c.isalnum() else "_" for c in key.upper())
    return f"_{name}" if name[:1].isdigit() else name


def env_quote(text: str) -> str:
    """Double-quoted as POSIX shells read it back: ``\\``, ``"``, ``$`` and backtick escaped,
    newlines kept as they are."""
    escaped = "".join(f"\\{c}" if c in '\\"$`' else c for c in text)
    return f'"{escaped}"'


def _template_line(exc: BaseException) -> str:
    """Where in the template it failed: Jinja2 rewrites the traceback to the template's lines."""
    frames = traceback.extract_tb(exc.__traceback__)
    lines = [frame.lineno for frame in frames if frame.filename == "<template>"]
    return f" (line {lines[-1]})" if lines else ""


_UNDEFINED = re.compile(r"has no (?:attribute|element) '([\w.-]+)'$|^'([\w.-]+)' is undefined$")


def _reason(exc: BaseException, template: str) -> str:
    if isinstance(exc, UndefinedError):
        # The missing name only when the template spells it out (`.name` or `["name"]`), so it
        # is the template's text; a secret's value used as a key is never printed.
        match = _UNDEFINED.search(exc.message or "")
        name = match and (match.group(1) or match.group(2))
        spelled = name and any(f in template for f in (f".{name}", f'"{name}"', f"'{name}'"))
        return f"it names {name!r}, which is not there" if spelled else "it names what is not there"
    if isinstance(exc, SecurityError):
        return "it calls what the sandbox forbids"
    return f"{type(exc).__name__} while rendering it"


def render(
    output_format: str, secrets: Mapping[str, Secret], template: str | None
) -> dict[str, str]:
    """The files to write, by name relative to the output folder (``None`` means -n)."""
    keys = sorted(secrets)
    if output_format == "files":
        return {key: compact(secrets[key]) for key in keys}
    if output_format == "json":
        body = json.dumps({k: secrets[k] for k in keys}, ensure_ascii=False, indent=4) + "\n"
    elif output_format == "cfg":
        body = "".join(f"{k}={compact(secrets[k])}\n" for k in keys)
    elif output_format == "cfg-strict":
        body = "".join(
            f"{k}={json.dumps(v, ensure_ascii=False) if isinstance(v, str) else compact(v)}\n"
            for k, v in ((k, secrets[k]) for k in keys)
        )
    elif output_format == "env":
        names: dict[str, str] = {}
        for key in keys:
            name = env_name(key)
            if name in names:
                raise InitError(f"{names[name]} and {key} would both be {name} in the env file")
            names[name] = key
        body = "".join(f"{n}={env_quote(compact(secrets[k]))}\n" for n, k in names.items())
    elif output_format == "custom":
        if template is None:
            raise InitError(f"the custom format needs a {TEMPLATE_FILE} in an encrypted folder")
        # Sandboxed: the template comes from a ConfigMap. StrictUndefined: a typo in a key name
        # fails the pod instead of writing an empty secret.
        env = ImmutableSandboxedEnvironment(
            undefined=StrictUndefined, keep_trailing_newline=True, autoescape=False
        )
        try:
            compiled = env.from_string(template)
        except TemplateSyntaxError as exc:
            # Compiling sees only the template (a ConfigMap, not a secret): its words may be quoted.
            raise InitError(
                f"{TEMPLATE_FILE} does not render (line {exc.lineno}): {exc.message}"
            ) from None
        try:
            body = compiled.render(secrets=dict(secrets), stringify_if_json=compact)
        except Exception as exc:  # any failure of a user's template
            # Never the message: rendering errors quote values ("'dict object' has no attribute
            # '<a secret used as a key>'", a codec's character).
            raise InitError(
                f"{TEMPLATE_FILE} does not render{_template_line(exc)}: {_reason(exc, template)}"
            ) from None
    else:
        raise InitError(f"unknown output format {output_format}")
    return {"": body}


# -- writing ---------------------------------------------------------------------------------


def write_atomically(directory: Path, files: Mapping[Path, str], mode: int) -> None:
    """Each file appears whole or not at all; if any fails, none of this run's files remain."""
    directory.mkdir(parents=True, exist_ok=True)
    staged: list[tuple[str, Path]] = []
    try:
        for target, content in files.items():
            fd, temp = tempfile.mkstemp(dir=directory, prefix=".kamus-")
            staged.append((temp, target))
            with os.fdopen(fd, "w", encoding="utf-8", newline="") as handle:
                handle.write(content)
                handle.flush()
                os.fsync(handle.fileno())
            os.chmod(temp, mode)
        for temp, target in staged:
            os.replace(temp, target)
    except OSError as exc:
        for temp, _ in staged:
            Path(temp).unlink(missing_ok=True)
        raise InitError(f"cannot write into {directory}: {exc.strerror}") from None


def run_init(options: InitOptions) -> None:
    if options.output_format not in FORMATS:
        raise InitError(f"--output-format must be one of {', '.join(FORMATS)}")
    if options.output_format != "files" and not options.file_name:
        raise InitError(
            f"-n/--decrypted-file-name is needed for the {options.output_format} format"
        )
    files, template = collect(options.folders, options.output_format)
    log(f"decrypting {len(files)} secrets: {', '.join(sorted(files)) or 'none'}")
    plaintexts = decrypt_all(options, files) if files else {}
    secrets = {name: interpret(text) for name, text in plaintexts.items()}
    rendered = render(options.output_format, secrets, template)
    targets = {
        options.output_dir / (name or str(options.file_name)): content
        for name, content in rendered.items()
    }
    write_atomically(options.output_dir, targets, options.file_mode)
    log(f"wrote {', '.join(str(t) for t in targets)} ({options.output_format} format)")
