"""Fuzzing of every ciphertext parser: on any string, nothing but ``DecryptionError``.

The parsers and the contract they keep are in :mod:`tests.fuzz.targets`: ``classify``, the strict
base64 decoders, the e1 envelope, Kamus's legacy formats, and the whole ``decrypt`` of each
provider (AES in three configurations; AWS, Google and Azure with legacy reading on and off, their
SDK clients replaced by in-process stand-ins). This file drives them three ways:

* hypothesis, structure-aware: valid and near-valid values of every format and provider, mutated
  field by field (bit flips under the base64, truncation, extension, other base64 spellings,
  separators, huge fields, empty fields, unicode look-alikes, whitespace, case, splicing), plus raw
  text and token soup;
* hypothesis against the real KMS doubles (moto, the Cloud KMS and Key Vault doubles), through
  the real SDKs, on mutations of values those KMSs made;
* atheris (coverage-guided) over the same targets, in a subprocess with a bounded run count.

``tests/test_crypto.py`` already fuzzes the AES provider with short garbage and a1 mutations; this
file covers what it does not (the cloud providers, the envelope and legacy parsers on their own,
every format as input to every provider, structure-aware field mutations, huge inputs).

Every fuzz test counts the inputs it ran, records them (``record_property``, the pytest cache
under ``kamus/fuzz/``, and the captured output), and fails if the count falls short.
"""

import asyncio
import base64
import hashlib
import importlib.util
import json
import os
import re
import subprocess
import sys
import tracemalloc
import unicodedata
from collections import Counter
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Literal

import pytest
from azure.core.exceptions import ResourceNotFoundError, ServiceRequestError
from botocore.exceptions import EndpointConnectionError
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding as rsa_padding
from google.api_core import exceptions as gexc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from crypto import (
    AESKeyManager,
    CiphertextFormat,
    DecryptionError,
    KeyManager,
    classify,
    envelope,
    kamus_key_id,
    legacy,
)
from crypto.aws import classify_aws_error
from crypto.azure import classify_azure_error
from crypto.encoding import b64_decode, b64url_decode, b64url_encode
from crypto.gcp import classify_gcp_error
from crypto.kms import BlockingCalls, Classifier, KmsError
from kamus.providers import build_key_manager
from tests.conftest import SettingsFactory
from tests.fuzz import targets
from tests.fuzz.atheris_parsers import write_seeds
from tests.fuzz.targets import (
    AWS_BLOB_MAX,
    IDENTITY,
    SEEDS,
    Target,
    b64,
    cbc,
    drive,
    rejected_label,
)
from tests.kms_doubles.aws import AwsKmsDouble
from tests.kms_doubles.azure import KeyVaultDouble
from tests.kms_doubles.gcp import CloudKmsDouble

ROOT = Path(__file__).resolve().parent.parent
TARGETS = targets.build_targets()
EXAMPLES_PER_TARGET = 1000
EXAMPLES_PER_DOUBLE = 100
ATHERIS_RUNS = int(os.environ.get("KAMUS_FUZZ_ATHERIS_RUNS", "50000"))

# A field longer than this is clipped, to keep examples fast. Past 8192 base64 characters (6144
# bytes, the most AWS KMS accepts as a CiphertextBlob) the AWS provider rejects the value itself:
# test_aws_oversized_wrapped_key_is_rejected.
FIELD_MAX = 16384


def record(
    request: pytest.FixtureRequest,
    record_property: Callable[[str, object], None],
    name: str,
    outcomes: Counter[str],
    minimum: int,
) -> None:
    """Report how many inputs ran and what happened to them; fail if too few ran."""
    total = outcomes.total()
    record_property("fuzz_inputs", total)
    record_property("fuzz_outcomes", dict(outcomes))
    cache = getattr(request.config, "cache", None)
    if cache is not None:
        cache.set(f"kamus/fuzz/{name}", {"inputs": total, "outcomes": dict(outcomes)})
    print(f"fuzz {name}: {total} inputs, {len(outcomes)} distinct outcomes")
    for outcome, count in outcomes.most_common():
        print(f"  {count:6d}  {outcome}")
    assert total >= minimum, f"only {total} inputs ran, fewer than {minimum}"


# --- strategies ---------------------------------------------------------------------------------

B64URL_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
LOOKALIKES = [
    "\u00a0",  # no-break space
    "\u0085",  # next line
    "\u200b",  # zero-width space
    "\ufeff",  # byte order mark
    "\uff04",  # fullwidth dollar
    "\ufe69",  # small dollar
    "\uff1a",  # fullwidth colon
    "\uff21",  # fullwidth A
    "\u0661",  # Arabic-Indic digit one (str.isdigit() is true)
    "\u0301",  # combining acute accent
    "\u212a",  # Kelvin sign (lower-cases to k)
    "\u017f",  # long s (upper-cases to S)
    "\u0130",  # I with dot (lower-cases to two characters)
    "é",
    "\ud800",  # lone surrogates: a JSON body can carry them
    "\udfff",
    "\U0001f510",
]
INTERESTING = [*"$:=+/-_. \t\n\r\x00\x7f", *LOOKALIKES]
any_char = st.one_of(
    st.sampled_from([*B64URL_ALPHABET, "+", "/", *INTERESTING]),
    st.characters(exclude_categories=()),
)
HEADERS = [
    "kamus$a1$",
    "kamus$e1$",
    "kamus$e1$aws$",
    "kamus$e1$gcp$",
    "kamus$e1$azure$",
    "kamus$e1$aws$$",
    "kamus$a2$",
    "kamus$e2$",
    "kamus$",
    "kamus",
    "KAMUS$a1$",
    "Kamus$e1$",
    "kamus\uff04a1\uff04",
    "env$",
    "env$$",
    "ENV$",
    "",
]
NORMAL_FORMS: list[Literal["NFC", "NFD", "NFKC", "NFKD"]] = ["NFC", "NFD", "NFKC", "NFKD"]
WHITESPACE = [" ", "\n", "\r\n", "\t", "\u00a0", "\u3000"]


def _encoders() -> list[Callable[[bytes], str]]:
    return [
        b64url_encode,
        lambda b: base64.urlsafe_b64encode(b).decode(),  # padded
        b64,
        lambda b: b64(b).rstrip("="),  # unpadded standard
        lambda b: base64.encodebytes(b).decode(),  # MIME lines
        lambda b: b64(b) + "\n",
        lambda b: b.hex(),
    ]


ENCODERS = _encoders()


def _decoded(field: str) -> tuple[bytes, Callable[[bytes], str]] | None:
    """The bytes under a canonical base64url or base64 field, and how to spell them again."""
    for decode, encode in ((b64url_decode, b64url_encode), (b64_decode, b64)):
        try:
            return decode(field), encode
        except DecryptionError:
            continue
    return None


def _fields(text: str) -> list[str]:
    """Fields and separators alternating: ``a$b:c`` -> ``[a, $, b, :, c]``."""
    return re.split(r"([$:])", text)


@st.composite
def field_mutation(draw: st.DrawFn, text: str) -> str:
    parts = _fields(text)
    i = 2 * draw(st.integers(0, len(parts) // 2))
    field = parts[i]
    op = draw(
        st.sampled_from(
            ["bitflip", "resize", "respell", "huge", "empty", "drop", "dup", "swap", "fullwidth"]
        )
    )
    decoded = _decoded(field)
    if op == "bitflip" and decoded and decoded[0]:
        raw, encode = decoded
        bit = draw(st.integers(0, 8 * len(raw) - 1))
        flipped = bytearray(raw)
        flipped[bit // 8] ^= 1 << (bit % 8)
        parts[i] = encode(bytes(flipped))
    elif op == "resize" and decoded:
        raw, encode = decoded
        if draw(st.booleans()):
            raw = raw[: draw(st.integers(0, len(raw)))]
        else:
            tail = draw(st.binary(min_size=1, max_size=48))
            raw += tail * draw(st.sampled_from([1, 2, 16, 128]))
        parts[i] = encode(raw)
    elif op == "respell" and decoded:
        parts[i] = draw(st.sampled_from(ENCODERS))(decoded[0])
    elif op == "huge":
        unit = draw(st.sampled_from(["A", "AAAA", "_", "-w", "=", "AA==", "$", ":", "é"]))
        parts[i] = unit * draw(st.integers(1000, FIELD_MAX))
    elif op == "empty":
        parts[i] = ""
    elif op == "drop" and len(parts) > 1:
        start = i if i + 1 < len(parts) else i - 1  # the field and one separator beside it
        del parts[start : start + 2]
    elif op == "dup":
        sep = parts[i + 1] if i + 1 < len(parts) else draw(st.sampled_from("$:"))
        parts[i] = field + sep + field
    elif op == "swap" and len(parts) > 2:
        j = 2 * draw(st.integers(0, len(parts) // 2))
        parts[i], parts[j] = parts[j], parts[i]
    elif op == "fullwidth":
        parts[i] = "".join(chr(ord(c) + 0xFEE0) if "!" <= c <= "~" else c for c in field)
    else:
        parts[i] = field + draw(st.text(any_char, min_size=1, max_size=4))
    return "".join(parts)


@st.composite
def separator_mutation(draw: st.DrawFn, text: str) -> str:
    positions = [i for i, c in enumerate(text) if c in "$:"]
    replacement = draw(st.sampled_from(["", "$", ":", "$$", "::", "\uff04", "\uff1a", "$:", ":$"]))
    if not positions:
        i = draw(st.integers(0, len(text)))
        return text[:i] + replacement + text[i:]
    i = draw(st.sampled_from(positions))
    return text[:i] + replacement + text[i + 1 :]


@st.composite
def prefix_mutation(draw: st.DrawFn, text: str) -> str:
    rest = text
    for header in sorted(HEADERS, key=len, reverse=True):
        if header and text.startswith(header):
            rest = text[len(header) :]
            break
    return draw(st.sampled_from(HEADERS)) + rest


@st.composite
def char_mutation(draw: st.DrawFn, text: str) -> str:
    i = draw(st.integers(0, len(text)))
    op = draw(st.sampled_from(["replace", "insert", "delete"]))
    if op == "insert" or not text or i == len(text):
        return text[:i] + draw(st.text(any_char, min_size=1, max_size=3)) + text[i:]
    if op == "replace":
        return text[:i] + draw(any_char) + text[i + 1 :]
    return text[:i] + text[i + draw(st.integers(1, 8)) :]


@st.composite
def whole_mutation(draw: st.DrawFn, text: str) -> str:
    op = draw(
        st.sampled_from(
            ["truncate", "append", "whitespace", "case", "normalize", "splice", "repeat"]
        )
    )
    if op == "truncate":
        return text[: draw(st.integers(0, max(len(text) - 1, 0)))]
    if op == "append":
        return text + draw(st.text(any_char, min_size=1, max_size=12))
    if op == "whitespace":
        ws = draw(st.sampled_from(WHITESPACE))
        where = draw(st.sampled_from(["start", "end", "both", "inside"]))
        if where == "inside":
            i = draw(st.integers(0, len(text)))
            return text[:i] + ws + text[i:]
        return (ws if where != "end" else "") + text + (ws if where != "start" else "")
    if op == "case":
        change: Callable[[str], str] = draw(
            st.sampled_from([str.upper, str.lower, str.swapcase, str.casefold])
        )
        return change(text)
    if op == "normalize":
        form = draw(st.sampled_from(NORMAL_FORMS))
        return unicodedata.normalize(form, text)
    if op == "splice":
        other = draw(st.sampled_from(SEEDS))
        return text[: draw(st.integers(0, len(text)))] + other[draw(st.integers(0, len(other))) :]
    return text + draw(st.sampled_from(["", "$", ":", "\n"])) + text


def _clip(text: str) -> str:
    """Keep every field within FIELD_MAX characters (see FIELD_MAX)."""
    parts = _fields(text)
    return "".join(p if len(p) <= FIELD_MAX else p[:FIELD_MAX] for p in parts)


@st.composite
def tampered(draw: st.DrawFn, values: list[str]) -> str:
    """A value with one base64 field altered under its encoding, spelled canonically again: it
    gets past every format check, to the KMS and the authentication (or CBC) underneath."""
    text = draw(st.sampled_from(values))
    parts = _fields(text)
    decodable = [i for i in range(0, len(parts), 2) if parts[i] and _decoded(parts[i])]
    if not decodable:
        return draw(mutated([text]))
    i = draw(st.sampled_from(decodable))
    decoded = _decoded(parts[i])
    assert decoded is not None
    raw, encode = decoded
    op = draw(st.sampled_from(["bitflip", "bitflip", "byte", "transplant", "shorten", "lengthen"]))
    if op in ("bitflip", "byte") and raw:
        at = draw(st.integers(0, len(raw) - 1))
        changed = bytearray(raw)
        changed[at] = (
            changed[at] ^ (1 << draw(st.integers(0, 7)))
            if op == "bitflip"
            else draw(st.integers(0, 255).filter(lambda b: b != raw[at]))
        )
        raw = bytes(changed)
    elif op == "transplant":
        # The same field of another value of the same shape (cut and paste between values).
        others = [_fields(v) for v in values]
        donors = [o[i] for o in others if len(o) == len(parts) and o[i] != parts[i]]
        if donors:
            parts[i] = draw(st.sampled_from(donors))
            return "".join(parts)
        raw = raw[::-1]
    elif op == "shorten":
        raw = raw[: draw(st.integers(0, max(len(raw) - 1, 0)))]
    else:
        raw += draw(st.binary(min_size=1, max_size=32))
    parts[i] = encode(raw)
    return _clip("".join(parts))


@st.composite
def mutated(draw: st.DrawFn, seeds: list[str]) -> str:
    text = draw(st.sampled_from(seeds))
    kinds = [field_mutation, separator_mutation, prefix_mutation, char_mutation, whole_mutation]
    for _ in range(draw(st.integers(1, 3))):
        text = draw(draw(st.sampled_from(kinds))(text))
    return _clip(text)


TOKENS = [
    "kamus",
    "$",
    ":",
    "a1",
    "e1",
    "aws",
    "gcp",
    "azure",
    "env",
    "=",
    "==",
    "1",
    "-",
    *(s.split("$")[2] for s in SEEDS if s.startswith("kamus$a1$")),  # real kids
    targets.AZURE_VERSION,
    b64(bytes(16)),
    b64(bytes(32)),
    b64url_encode(bytes(12)),
    b64url_encode(bytes(28)),
    b64url_encode(targets.WRAPPED["aws"]),
    b64url_encode(targets.ECHO + bytes(32)),
    "AAAA",
    "A",
]

raw_text = st.one_of(
    st.text(any_char, max_size=200),
    st.lists(st.sampled_from(TOKENS), max_size=14).map("".join),
    st.builds(
        lambda header, data, encode: header + encode(data),
        st.sampled_from(HEADERS),
        st.binary(max_size=300),
        st.sampled_from(ENCODERS),
    ),
)


def fuzz_inputs(own: list[str]) -> st.SearchStrategy[str]:
    """Mostly alterations of values the target opens (they get past the first checks), then
    mutations of any format's values, then raw text."""
    return st.one_of(tampered(own), mutated(own), tampered(own), mutated(SEEDS), raw_text)


def own_seeds(target: Target) -> list[str]:
    """The seeds that open in ``target`` (for a pure parser: those it parses), else all."""
    return [s for s in SEEDS if target.check(s) in ("opened", "parsed")] or SEEDS


# --- in-process: every parser, every provider ---------------------------------------------------


@pytest.mark.parametrize("target", TARGETS, ids=[t.name for t in TARGETS])
def test_every_parser_only_raises_decryption_error(
    target: Target, request: pytest.FixtureRequest, record_property: Callable[[str, object], None]
) -> None:
    outcomes: Counter[str] = Counter()

    @settings(
        max_examples=EXAMPLES_PER_TARGET,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow],  # 8 KiB fields on a slow CI machine
    )
    @given(text=fuzz_inputs(own_seeds(target)))
    def fuzz(text: str) -> None:
        outcomes[target.check(text)] += 1

    kms_calls_before = target.kms.calls if target.kms else 0
    fuzz()
    record(request, record_property, target.name, outcomes, EXAMPLES_PER_TARGET)
    # The fuzz got past the first checks: several different outcomes, not one early rejection.
    assert len(outcomes) >= 3, outcomes
    if target.kms:
        kms_calls = target.kms.calls - kms_calls_before
        record_property("kms_calls", kms_calls)
        print(f"  {kms_calls} calls reached the stand-in KMS")
        assert kms_calls >= EXAMPLES_PER_TARGET // 20


def test_seeds_reach_every_format_and_open() -> None:
    """The seeds the fuzzers start from: every format, and values that do open."""
    formats = Counter(classify(s) for s in SEEDS)
    assert set(formats) == set(CiphertextFormat), formats
    for target in TARGETS:
        if target.name not in ("classify", "encoding"):
            opened = [s for s in SEEDS if target.check(s) == "opened"]
            assert opened, f"no seed opens in {target.name}: the fuzz would stay shallow"


# --- against the real KMS doubles, through the real SDKs -----------------------------------------


def fuzz_provider(
    manager: KeyManager,
    valid: dict[str, bytes],
    legacy_utf8: bool,
    outcomes: Counter[str],
) -> None:
    """Mutations of ``valid`` values (and of every other seed) against one provider."""
    values = [v for v in valid if v]
    seeds = [*values, *SEEDS[:: max(len(SEEDS) // 10, 1)]]

    @settings(
        max_examples=EXAMPLES_PER_DOUBLE,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow],
    )
    @given(text=st.one_of(tampered(values), tampered(values), mutated(values), mutated(seeds)))
    def fuzz(text: str) -> None:
        try:
            plaintext = asyncio.run(manager.decrypt(text, IDENTITY))
        except DecryptionError as error:
            outcomes[rejected_label(error)] += 1  # checks the message and the reason
            return
        fmt = classify(text)
        if text in valid:
            assert plaintext == valid[text]
        elif fmt in (CiphertextFormat.LEGACY_AES_CBC, CiphertextFormat.LEGACY_ENVELOPE):
            assert legacy_utf8
            plaintext.decode("utf-8")  # unauthenticated CBC: a mutation may open, to UTF-8 only
        else:
            raise AssertionError(f"a mutated {fmt} value opened: {text[:80]!r}")
        outcomes["opened"] += 1

    fuzz()


AWS = {"KeyManagement__Provider": "AwsKms", "KeyManagement__AwsKms__Region": "us-east-1"}
GCP = {
    "KeyManagement__Provider": "GoogleKms",
    "KeyManagement__GoogleKms__ProjectId": "proj",
    "KeyManagement__TimeoutSeconds": "5",
    "KeyManagement__MaxRetries": "1",
}


def test_aws_kms_double(
    aws_kms: AwsKmsDouble,
    make_settings: SettingsFactory,
    request: pytest.FixtureRequest,
    record_property: Callable[[str, object], None],
) -> None:
    manager = build_key_manager(make_settings(**AWS))
    e1 = asyncio.run(manager.encrypt(b"fuzz value", IDENTITY))  # creates the key and alias
    alias = f"alias/kamus/{kamus_key_id(IDENTITY)}"
    generated = aws_kms.client().generate_data_key(KeyId=alias, KeySpec="AES_256")
    kamus = f"env${b64(generated['CiphertextBlob'])}${cbc(generated['Plaintext'], b'kamus ok')}"
    outcomes: Counter[str] = Counter()
    aws_kms.requests.clear()
    fuzz_provider(manager, {e1: b"fuzz value", kamus: b"kamus ok", "": b""}, True, outcomes)
    kms_calls = len(aws_kms.requests)
    record(request, record_property, "aws-double", outcomes, EXAMPLES_PER_DOUBLE)
    record_property("kms_calls", kms_calls)
    print(f"  {kms_calls} calls reached KMS")
    assert kms_calls >= EXAMPLES_PER_DOUBLE // 10


def test_gcp_kms_double(
    gcp_kms: CloudKmsDouble,
    make_settings: SettingsFactory,
    request: pytest.FixtureRequest,
    record_property: Callable[[str, object], None],
) -> None:
    manager = build_key_manager(make_settings(**GCP))
    e1 = asyncio.run(manager.encrypt(b"fuzz value", IDENTITY))  # creates the ring and key
    ring = "projects/proj/locations/global/keyRings/kamus"
    name = f"{ring}/cryptoKeys/{kamus_key_id(IDENTITY)}"
    raw = gcp_kms.client().encrypt(request={"name": name, "plaintext": b"kamus ok"}).ciphertext
    valid = {e1: b"fuzz value", b64(raw): b"kamus ok", "": b""}
    outcomes: Counter[str] = Counter()
    gcp_kms.requests.clear()
    fuzz_provider(manager, valid, False, outcomes)
    kms_calls = len(gcp_kms.requests)
    record(request, record_property, "gcp-double", outcomes, EXAMPLES_PER_DOUBLE)
    record_property("kms_calls", kms_calls)
    print(f"  {kms_calls} calls reached Cloud KMS")
    assert kms_calls >= EXAMPLES_PER_DOUBLE // 10


def test_azure_key_vault_double(
    azure_kv: KeyVaultDouble,
    make_settings: SettingsFactory,
    request: pytest.FixtureRequest,
    record_property: Callable[[str, object], None],
) -> None:
    manager = build_key_manager(
        make_settings(
            **{
                "KeyManagement__Provider": "AzureKeyVault",
                "KeyManagement__KeyVault__Url": azure_kv.url,
                "KeyManagement__KeyVault__VerifyChallengeResource": "false",
                "KeyManagement__MaxRetries": "1",
            }
        )
    )
    e1 = asyncio.run(manager.encrypt(b"fuzz value", IDENTITY))  # creates the key
    public = azure_kv.public_key(kamus_key_id(IDENTITY))
    sha1 = hashes.SHA1()  # noqa: S303 (Kamus's RSA-OAEP is OAEP with SHA-1)
    oaep = rsa_padding.OAEP(rsa_padding.MGF1(sha1), sha1, None)
    raw = b64(public.encrypt(b"kamus ok", oaep))
    data_key = hashlib.sha256(b"fuzz azure legacy key").digest()
    large = f"env${b64(public.encrypt(b64(data_key).encode(), oaep))}${cbc(data_key, b'big ok')}"
    valid = {e1: b"fuzz value", raw: b"kamus ok", large: b"big ok", "": b""}
    outcomes: Counter[str] = Counter()
    azure_kv.requests.clear()
    fuzz_provider(manager, valid, True, outcomes)
    kms_calls = len(azure_kv.requests)  # GetKey (key versions named by the value) included
    record(request, record_property, "azure-double", outcomes, EXAMPLES_PER_DOUBLE)
    record_property("kms_calls", kms_calls)
    print(f"  {kms_calls} calls reached Key Vault")
    assert kms_calls >= EXAMPLES_PER_DOUBLE // 10


# --- atheris: coverage-guided, over the same targets ---------------------------------------------


def test_atheris_over_every_parser(
    tmp_path: Path,
    request: pytest.FixtureRequest,
    record_property: Callable[[str, object], None],
) -> None:
    if importlib.util.find_spec("atheris") is None:
        pytest.skip(
            "ATHERIS IS NOT INSTALLED: the coverage-guided fuzzing of the ciphertext parsers did "
            "NOT run. It installs with `pip install -e '.[dev]'` on Linux x86_64 (atheris==3.0.0)."
        )
    corpus = tmp_path / "corpus"
    seeds = write_seeds(corpus)
    counts_file = tmp_path / "counts.json"
    command = [
        sys.executable,
        "-m",
        "tests.fuzz.atheris_parsers",
        f"-runs={ATHERIS_RUNS}",
        "-max_len=16384",  # see FIELD_MAX
        "-timeout=10",  # one input taking 10 s is a hang
        "-rss_limit_mb=2048",
        f"-artifact_prefix={tmp_path}/",
        str(corpus),
    ]
    env = {**os.environ, "KAMUS_FUZZ_COUNTS": str(counts_file)}
    done = subprocess.run(
        command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600, check=False
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, f"atheris found a failing input:\n{output[-6000:]}"
    match = re.search(r"Done (\d+) runs in (\d+) second", output)
    assert match, output[-3000:]
    runs, seconds = int(match.group(1)), int(match.group(2))
    counts: dict[str, int] = json.loads(counts_file.read_text())
    coverage = re.findall(r"cov: (\d+) ft: (\d+)", output)
    outcomes = Counter({f"target {name}": n for name, n in counts.items()})
    record(request, record_property, "atheris", outcomes, ATHERIS_RUNS)
    record_property("atheris_runs", runs)
    record_property("atheris_seconds", seconds)
    print(f"  atheris: Done {runs} runs in {seconds} s from {seeds} seeds; cov/ft {coverage[-1]}")
    assert runs >= ATHERIS_RUNS
    assert set(counts) == {t.name for t in TARGETS}


# --- huge inputs --------------------------------------------------------------------------------

MiB = 1 << 20
HUGE = 10 * MiB


def _huge_b64url(size: int) -> str:
    return b64url_encode(os.urandom(size * 3 // 4))


def _huge_shapes() -> dict[str, str]:
    kid = next(s.split("$")[2] for s in SEEDS if s.startswith("kamus$a1$"))
    body, std = _huge_b64url(HUGE), b64(os.urandom(HUGE * 3 // 4 - 48))
    iv = b64(bytes(16))
    shapes = {
        "a1 body": f"kamus$a1${kid}${body}",
        "legacy iv:ct": f"{iv}:{std}",
        "legacy env$ ct": f"env${b64(targets.AWS_LEGACY_BLOB)}${iv}:{std}",
        "raw base64": std,
        "not base64": "é" * HUGE,
        "no separators": "A" * HUGE,
    }
    for kms in targets.KMS_NAMES:
        version = targets.KEY_VERSIONS[kms]
        wrapped = b64url_encode(targets.WRAPPED[kms])
        shapes[f"e1 {kms} body"] = f"kamus$e1${kms}${version}${wrapped}${body}"
    return shapes


def _entry_points() -> dict[str, Callable[[str], object]]:
    aes = AESKeyManager(targets.AES_KEYS[0], targets.AES_KEYS[1:])
    managers: dict[str, KeyManager] = {
        "aes": aes,
        "aws": targets.aws_manager()[0],
        "gcp": targets.gcp_manager()[0],
        "azure": targets.azure_manager()[0],
    }
    return {
        name: (lambda m: lambda text: drive(m.decrypt(text, IDENTITY)))(manager)
        for name, manager in managers.items()
    }


def _peak_bytes(call: Callable[[], object]) -> tuple[int, BaseException | None]:
    tracemalloc.start()
    try:
        call()
        raised: BaseException | None = None
    except BaseException as exc:  # reported by the caller
        raised = exc
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return peak, raised


def _bound(text: str) -> int:
    # A handful of copies of the input (decoding it, re-encoding it for the canonical check,
    # decrypting it), never an object per character.
    return 6 * len(text) + MiB


@pytest.fixture(scope="module")
def huge_shapes() -> dict[str, str]:
    return _huge_shapes()


@pytest.mark.parametrize("entry", ["aes", "aws", "gcp", "azure"])
def test_ten_mebibyte_inputs_are_rejected_within_bounded_memory(
    entry: str, huge_shapes: dict[str, str], record_property: Callable[[str, object], None]
) -> None:
    decrypt = _entry_points()[entry]
    peaks = {}
    for shape, text in huge_shapes.items():
        peak, raised = _peak_bytes(partial(decrypt, text))
        assert isinstance(raised, DecryptionError), f"{shape}: {raised!r}"
        assert peak <= _bound(text), f"{shape}: peak {peak / MiB:.0f} MiB for {len(text)} chars"
        peaks[shape] = round(peak / len(text), 1)
    record_property("peak_per_input_byte", peaks)
    print(f"{entry}: peak memory per input character {peaks}")


def test_pure_parsers_reject_ten_mebibytes_within_bounded_memory(
    huge_shapes: dict[str, str],
) -> None:
    parsers: dict[str, Callable[[str], object]] = {
        "b64url_decode": b64url_decode,
        "b64_decode": b64_decode,
        "envelope.parse": lambda text: envelope.parse(text, "aws"),
        "parse_iv_ciphertext": legacy.parse_iv_ciphertext,
        "parse_legacy_envelope": legacy.parse_legacy_envelope,
    }
    text = huge_shapes["not base64"]
    for name, parse in parsers.items():
        peak, raised = _peak_bytes(partial(parse, text))
        assert isinstance(raised, DecryptionError), f"{name}: {raised!r}"
        assert peak <= _bound(text), f"{name}: peak {peak / MiB:.0f} MiB"
    peak, raised = _peak_bytes(lambda: classify(text))
    assert raised is None
    assert peak < MiB


# --- once bugs in crypto/, found by these fuzzers, kept as regression tests --------------------

SEPARATOR_SHAPES = {
    "a1 with 'ab$' repeated": "kamus$a1$" + "ab$" * (MiB // 3),
    "e1 with 'ab$' repeated": "kamus$e1$aws$" + "ab$" * (MiB // 3),
    "legacy with 'ab:' repeated": "ab:" * (MiB // 3),
    "env$ with 'ab:' repeated": "env$QUJD$" + "ab:" * (MiB // 3),
}


@pytest.mark.parametrize("shape", list(SEPARATOR_SHAPES))
def test_many_separators_are_rejected_within_bounded_memory(shape: str) -> None:
    text = SEPARATOR_SHAPES[shape]
    for entry, decrypt in _entry_points().items():
        peak, raised = _peak_bytes(partial(decrypt, text))
        assert isinstance(raised, DecryptionError), f"{entry}: {raised!r}"
        assert peak <= _bound(text), f"{entry}: peak {peak / MiB:.1f} MiB for 1 MiB of input"


def _aws_values(blob: bytes) -> dict[str, str]:
    """An e1 and a Kamus AWS value whose wrapped key is ``blob``."""
    return {
        "e1": f"kamus$e1$aws$1${b64url_encode(blob)}${b64url_encode(bytes(40))}",
        "legacy env$": f"env${b64(blob)}${b64(bytes(16))}:{b64(bytes(32))}",
    }


@pytest.mark.parametrize("shape", ["e1", "legacy env$"])
def test_aws_largest_wrapped_key_is_rejected(shape: str) -> None:
    """At AWS's limit (6144 bytes) the KMS is asked, and rejects the blob: a DecryptionError."""
    text = _aws_values(b"\x01" * AWS_BLOB_MAX)[shape]
    with pytest.raises(DecryptionError):
        drive(targets.aws_manager()[0].decrypt(text, IDENTITY))


@pytest.mark.parametrize("shape", ["e1", "legacy env$"])
def test_aws_oversized_wrapped_key_is_rejected(shape: str) -> None:
    text = _aws_values(b"\x01" * (AWS_BLOB_MAX + 1))[shape]
    # The real BlockingCalls this time (thread, deadline), to show the answer a service gives.
    calls = BlockingCalls("aws", timeout_seconds=5, max_concurrency=1, classify=classify_aws_error)
    manager, _ = targets.aws_manager(calls=calls)
    try:
        with pytest.raises(DecryptionError):
            asyncio.run(manager.decrypt(text, IDENTITY))
    finally:
        manager.close()


def _outcome(run: Callable[[], object]) -> tuple[str, str, str]:
    try:
        run()
    except Exception as exc:  # what the provider sees
        failure = exc.failure.name if isinstance(exc, KmsError) else ""
        return type(exc).__name__, getattr(exc, "reason", str(exc)), failure
    return "no error", "", ""


SDK_ERRORS: list[tuple[str, Classifier, list[Exception]]] = [
    (
        "aws",
        classify_aws_error,
        [
            targets.aws_error(code, "x")
            for code in (
                "InvalidCiphertextException",
                "AccessDeniedException",
                "NotFoundException",
                "ValidationException",
                "ThrottlingException",
            )
        ]
        + [EndpointConnectionError(endpoint_url="https://kms"), ValueError("not an SDK error")],
    ),
    (
        "gcp",
        classify_gcp_error,
        [
            targets.google_error(gexc.BadRequest, "x"),
            targets.google_error(gexc.NotFound, "x"),
            targets.google_error(gexc.ServiceUnavailable, "x"),
            OSError("down"),
        ],
    ),
    (
        "azure",
        classify_azure_error,
        [targets.azure_400(), ResourceNotFoundError(message="x"), ServiceRequestError("down")],
    ),
]


@pytest.mark.parametrize(
    ("provider", "classify_error", "errors"), SDK_ERRORS, ids=["aws", "gcp", "azure"]
)
def test_inline_calls_sort_errors_as_blocking_calls_do(
    provider: str, classify_error: Classifier, errors: list[Exception]
) -> None:
    """The in-process targets call the KMS through InlineCalls: it must answer as the real one."""
    inline = targets.InlineCalls(provider, classify_error)
    real = BlockingCalls(provider, timeout_seconds=5, max_concurrency=1, classify=classify_error)
    try:
        for error in errors:

            def fail(error: Exception = error) -> object:
                raise error

            expected = _outcome(lambda: asyncio.run(real("Decrypt", fail)))
            assert _outcome(lambda: drive(inline("Decrypt", fail))) == expected
    finally:
        real.close()


def test_reasons_stay_short_for_any_input() -> None:
    text = "kamus$e1$" + "x" * 100_000 + "$1$AAAA$AAAA"
    with pytest.raises(DecryptionError) as info:
        envelope.parse(text, "aws")
    assert len(info.value.reason) <= 200, f"a reason of {len(info.value.reason)} characters"
