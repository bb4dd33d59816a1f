"""``kamus init``, the init container: Kamus's formats and interface, against an original Kamus
decryptor (v1 only) and against ours (batch API), with the failures a pod start can meet."""

import json
import os
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response

from crypto import bundle
from crypto.sealing import Schedule
from kamus.cli.init import env_name
from kamus.cli.main import main
from tests.k8s_double import KubeApiDouble
from tests.support.mounts import configmap_mount
from tests.support.servers import ThreadedServer

TOKEN = "pod-token"
NOW = datetime.now(UTC)
# Kamus's own init-container fixtures (init-container/tests), as plaintexts by file name.
KAMUS_SECRETS = {
    "key.json": '{ "secret_key": "secret_value" }',
    "key-newlines.json": '{"secret_key": "secret_value\\nsecret_value"}',
    "key1": "super-secret-from-value",
    "key2": "super-secret",
}


@dataclass
class KamusDecryptor:
    """An original Kamus decryptor: ``/api/v1/decrypt`` only, plaintexts by ciphertext."""

    url: str = ""
    plaintexts: dict[str, str | bytes] = field(default_factory=dict)
    paths: list[str] = field(default_factory=list)
    unavailable: int = 0  # answer 503 this many more times
    retry_after: str | None = None  # with this Retry-After

    def app(self) -> FastAPI:
        app = FastAPI()

        @app.post("/api/v1/decrypt")
        async def decrypt(request: Request) -> Response:
            self.paths.append(request.url.path)
            if self.unavailable:
                self.unavailable -= 1
                headers = {"Retry-After": self.retry_after} if self.retry_after else None
                return PlainTextResponse("starting", status_code=503, headers=headers)
            if request.headers.get("authorization") != f"Bearer {TOKEN}":
                return Response(status_code=401)
            data = (await request.json())["data"]
            if data not in self.plaintexts:
                return JSONResponse({"detail": "the data cannot be decrypted"}, status_code=400)
            plaintext = self.plaintexts[data]
            if isinstance(plaintext, bytes):
                return Response(plaintext, media_type="text/plain")
            return PlainTextResponse(plaintext)

        @app.post("/api/v2/decrypt")
        async def batch(request: Request) -> Response:
            self.paths.append(request.url.path)
            return Response(status_code=404)  # Kamus has none: as ASP.NET answers

        return app


@pytest.fixture
def kamus() -> Iterator[KamusDecryptor]:
    stub = KamusDecryptor(plaintexts={f"CT({k})": v for k, v in KAMUS_SECRETS.items()})
    server = ThreadedServer(stub.app())
    server.start()
    stub.url = f"http://127.0.0.1:{server.port}"
    yield stub
    server.stop()


@pytest.fixture
def mount(tmp_path: Path) -> Path:
    return configmap_mount(tmp_path / "encrypted", {k: f"CT({k})" for k in KAMUS_SECRETS})


@pytest.fixture
def token_file(tmp_path: Path) -> Path:
    path = tmp_path / "token"
    path.write_text(TOKEN + "\n")
    return path


def init(url: str, token_file: Path, *args: str) -> Result:
    env = {"KAMUS_URL": url, "TOKEN_FILE_PATH": str(token_file)}
    return CliRunner().invoke(main, ["init", *args], env=env)


def outputs(folder: Path) -> dict[str, str]:
    return {p.name: p.read_text() for p in folder.iterdir()} if folder.exists() else {}


def test_json_like_kamus(
    kamus: KamusDecryptor, mount: Path, token_file: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    result = init(kamus.url, token_file, "-e", str(mount), "-d", str(out), "-n", "out.json")
    assert result.exit_code == 0, result.stderr
    # Kamus's expected.json (and key-newlines.json), parsed: objects embedded, the rest strings.
    assert json.loads((out / "out.json").read_text()) == {
        "key.json": {"secret_key": "secret_value"},
        "key-newlines.json": {"secret_key": "secret_value\nsecret_value"},
        "key1": "super-secret-from-value",
        "key2": "super-secret",
    }
    assert kamus.paths == ["/api/v2/decrypt"] + ["/api/v1/decrypt"] * 4  # learned, fell back


def test_cfg_and_cfg_strict_like_kamus(
    kamus: KamusDecryptor, mount: Path, token_file: Path, tmp_path: Path
) -> None:
    for fmt, expected in [
        (
            "cfg",
            # Kamus's expected.cfg lines, sorted by key.
            [
                'key-newlines.json={"secret_key":"secret_value\\nsecret_value"}',
                'key.json={"secret_key":"secret_value"}',
                "key1=super-secret-from-value",
                "key2=super-secret",
            ],
        ),
        (
            "CFG-STRICT",  # the format is case-insensitive, as in Kamus
            # Kamus's expected-strict.cfg, sorted by key.
            [
                'key-newlines.json={"secret_key":"secret_value\\nsecret_value"}',
                'key.json={"secret_key":"secret_value"}',
                'key1="super-secret-from-value"',
                'key2="super-secret"',
            ],
        ),
    ]:
        out = tmp_path / fmt
        result = init(
            kamus.url, token_file, "-e", str(mount), "-d", str(out), "-n", "x.cfg", "-f", fmt
        )
        assert result.exit_code == 0, result.stderr
        assert (out / "x.cfg").read_text() == "".join(f"{line}\n" for line in expected)


def test_files_like_kamus(
    kamus: KamusDecryptor, mount: Path, token_file: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    result = init(kamus.url, token_file, "-e", str(mount), "-d", str(out), "-f", "files")
    assert result.exit_code == 0, result.stderr
    assert outputs(out) == {
        "key.json": '{"secret_key":"secret_value"}',
        "key-newlines.json": '{"secret_key":"secret_value\\nsecret_value"}',
        "key1": "super-secret-from-value",
        "key2": "super-secret",
    }
    for path in out.iterdir():
        assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_several_folders_and_a_custom_jinja_template(
    kamus: KamusDecryptor, mount: Path, token_file: Path, tmp_path: Path
) -> None:
    kamus.plaintexts["CT(db)"] = "s3cr3t"
    other = configmap_mount(
        tmp_path / "more",
        {
            "db": "CT(db)",
            "template.j2": 'password={{ secrets["db"] }}\n'
            'json={{ stringify_if_json(secrets["key.json"]) }}\n'
            "{% for k in secrets | sort %}{{ k }} {% endfor %}\n",
        },
    )
    out = tmp_path / "out"
    folders = f"{mount},{other}"
    result = init(
        kamus.url, token_file, "-e", folders, "-d", str(out), "-n", "app.conf", "-f", "custom"
    )
    assert result.exit_code == 0, result.stderr
    assert (out / "app.conf").read_text() == (
        "password=s3cr3t\n"
        'json={"secret_key":"secret_value"}\n'
        "db key-newlines.json key.json key1 key2 \n"
    )
    assert "CT(template.j2)" not in kamus.plaintexts  # the template is never sent to decrypt


def test_a_template_naming_a_missing_secret_fails_the_pod(
    kamus: KamusDecryptor, token_file: Path, tmp_path: Path
) -> None:
    folder = configmap_mount(
        tmp_path / "enc", {"key1": "CT(key1)", "template.j2": "{{ secrets.nope }}"}
    )
    out = tmp_path / "out"
    result = init(
        kamus.url, token_file, "-e", str(folder), "-d", str(out), "-n", "x", "-f", "custom"
    )
    assert result.exit_code == 1
    assert "template.j2 does not render" in result.stderr
    assert outputs(out) == {}


ENV_VALUES = {
    "plain": "simple",
    "quotes": """it's "quoted" """,
    "dollar": "$HOME and ${PATH} and $(id)",
    "newlines": "line 1\nline 2\n",
    "hash": "value # not a comment",
    "unicode": "ünïcødé ✓ 秘密",
    "backslash": "C:\\path\\n\\t",
    "backtick": "`whoami`",
    "db-password.txt": "dashes and dots in the name",
}


def test_env_format_round_trips_through_a_shell(
    kamus: KamusDecryptor, token_file: Path, tmp_path: Path
) -> None:
    kamus.plaintexts.update({f"CT({k})": v for k, v in ENV_VALUES.items()})
    folder = configmap_mount(tmp_path / "enc", {k: f"CT({k})" for k in ENV_VALUES})
    out = tmp_path / "out"
    result = init(
        kamus.url, token_file, "-e", str(folder), "-d", str(out), "-n", ".env", "-f", "env"
    )
    assert result.exit_code == 0, result.stderr
    names = {env_name(k): k for k in ENV_VALUES}
    assert "DB_PASSWORD_TXT" in names
    dump = "import json, os, sys; print(json.dumps({n: os.environ[n] for n in sys.argv[1:]}))"
    shell = subprocess.run(
        [
            "/bin/sh",
            "-c",
            'set -a; . "$0"; exec "$@"',
            str(out / ".env"),
            sys.executable,
            "-c",
            dump,
            *names,
        ],
        capture_output=True,
        text=True,
        check=True,
        env={"PATH": os.environ["PATH"], "HOME": "/home/nobody"},
    )
    read_back = json.loads(shell.stdout)
    assert {names[n]: v for n, v in read_back.items()} == ENV_VALUES


def test_env_names_that_collide_are_refused(
    kamus: KamusDecryptor, token_file: Path, tmp_path: Path
) -> None:
    kamus.plaintexts.update({"CT(a-b)": "1", "CT(a.b)": "2"})
    folder = configmap_mount(tmp_path / "enc", {"a-b": "CT(a-b)", "a.b": "CT(a.b)"})
    result = init(
        kamus.url, token_file, "-e", str(folder), "-d", str(tmp_path / "o"), "-n", "e", "-f", "env"
    )
    assert result.exit_code == 1
    assert "would both be A_B" in result.stderr


def test_a_value_that_does_not_decrypt_names_the_file_and_writes_nothing(
    kamus: KamusDecryptor, mount: Path, token_file: Path, tmp_path: Path
) -> None:
    (mount / "..data" / "key2").write_text("CT(tampered)")
    out = tmp_path / "out"
    result = init(kamus.url, token_file, "-e", str(mount), "-d", str(out), "-f", "files")
    assert result.exit_code == 1
    assert f"cannot decrypt {mount / 'key2'}: the server answered 400" in result.stderr
    assert "the data cannot be decrypted" in result.stderr
    assert outputs(out) == {}


def test_retries_while_the_decryptor_starts(
    kamus: KamusDecryptor, mount: Path, token_file: Path, tmp_path: Path
) -> None:
    kamus.unavailable = 2
    out = tmp_path / "out"
    result = init(
        kamus.url, token_file, "-e", str(mount), "-d", str(out), "-n", "o.json", "--timeout", "20"
    )
    assert result.exit_code == 0, result.stderr
    assert result.stderr.count("not ready") == 2


def test_waits_as_long_as_the_decryptor_asks_within_the_timeout(
    kamus: KamusDecryptor, mount: Path, token_file: Path, tmp_path: Path
) -> None:
    """A 503's Retry-After (its KMS throttling, say) is the least wait, never past --timeout."""
    kamus.unavailable, kamus.retry_after = 1, "1"
    out = tmp_path / "out"
    args = ("-e", str(mount), "-d", str(out), "-n", "o.json")
    result = init(kamus.url, token_file, *args, "--timeout", "20")
    assert result.exit_code == 0, result.stderr
    assert "retrying in 1.0s" in result.stderr  # not the 0.25-0.5 s of its own first backoff

    kamus.unavailable, kamus.retry_after = 1000, "30"
    started = time.monotonic()
    result = init(kamus.url, token_file, *args, "--timeout", "1")
    assert result.exit_code == 1
    assert "still answered 503 after 1s" in result.stderr
    assert time.monotonic() - started < 5


def test_gives_up_at_the_deadline(
    kamus: KamusDecryptor, mount: Path, token_file: Path, tmp_path: Path
) -> None:
    kamus.unavailable = 1000
    result = init(
        kamus.url,
        token_file,
        "-e",
        str(mount),
        "-d",
        str(tmp_path / "o"),
        "-n",
        "x",
        "--timeout",
        "1",
    )
    assert result.exit_code == 1
    assert "still answered 503 after 1s" in result.stderr
    unreachable = init(
        "http://127.0.0.1:9",
        token_file,
        "-e",
        str(mount),
        "-d",
        str(tmp_path / "o"),
        "-n",
        "x",
        "--timeout",
        "1",
    )
    assert unreachable.exit_code == 3
    assert "cannot reach http://127.0.0.1:9" in unreachable.stderr


@pytest.mark.parametrize(
    ("args", "message", "code"),
    [
        (["-f", "json"], "-n/--decrypted-file-name is needed", 1),
        (["-n", "x", "-f", "yaml"], "Invalid value for '-f'", 2),
        (["-n", "x", "--file-mode", "rw"], "is not an octal mode", 2),
    ],
)
def test_usage_errors(
    kamus: KamusDecryptor,
    mount: Path,
    token_file: Path,
    tmp_path: Path,
    args: list[str],
    message: str,
    code: int,
) -> None:
    result = init(kamus.url, token_file, "-e", str(mount), "-d", str(tmp_path / "o"), *args)
    assert result.exit_code == code
    assert message in result.stderr


def test_a_missing_token_says_what_to_set(
    kamus: KamusDecryptor, mount: Path, tmp_path: Path
) -> None:
    result = init(
        kamus.url, tmp_path / "none", "-e", str(mount), "-d", str(tmp_path / "o"), "-n", "x"
    )
    assert result.exit_code == 1
    assert "TOKEN_FILE_PATH" in result.stderr


def test_file_mode_is_configurable_and_no_secret_is_printed(
    kamus: KamusDecryptor, mount: Path, token_file: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    result = init(
        kamus.url, token_file, "-e", str(mount), "-d", str(out), "-n", "o", "--file-mode", "0640"
    )
    assert stat.S_IMODE((out / "o").stat().st_mode) == 0o640
    for plaintext in KAMUS_SECRETS.values():
        assert plaintext not in result.output
    assert "key1" in result.stderr  # names are fine


# -- errors never quote a secret ---------------------------------------------------------------


def test_a_template_error_never_quotes_a_secret(
    kamus: KamusDecryptor, token_file: Path, tmp_path: Path
) -> None:
    """Jinja2's messages quote what they could not find, and here that is a secret's value."""
    template = 'first line\n{{ {}[secrets["key1"]] }}\n'
    folder = configmap_mount(tmp_path / "enc", {"key1": "CT(key1)", "template.j2": template})
    out = tmp_path / "out"
    result = init(
        kamus.url, token_file, "-e", str(folder), "-d", str(out), "-n", "x", "-f", "custom"
    )
    assert result.exit_code == 1
    assert "template.j2 does not render (line 2): it names what is not there" in result.stderr
    assert KAMUS_SECRETS["key1"] not in result.output
    assert outputs(out) == {}
    # A name the template spells out is the template's own text, and still named.
    (folder / "..data" / "template.j2").write_text('{{ secrets["nope"] }}')
    named = init(
        kamus.url, token_file, "-e", str(folder), "-d", str(out), "-n", "x", "-f", "custom"
    )
    assert "does not render (line 1): it names 'nope', which is not there" in named.stderr


@pytest.fixture
def cut_short() -> Iterator[str]:
    """A decryptor whose batch answer a proxy cut short, in the middle of a plaintext."""
    app = FastAPI()

    @app.post("/api/v2/decrypt")
    async def batch() -> Response:
        whole = json.dumps({"items": {"key1": {"data": KAMUS_SECRETS["key1"]}}})
        return Response(whole[:-8], media_type="application/json")

    server = ThreadedServer(app)
    server.start()
    yield f"http://127.0.0.1:{server.port}"
    server.stop()


def test_a_malformed_decryptor_answer_is_located_never_quoted(
    cut_short: str, token_file: Path, tmp_path: Path
) -> None:
    folder = configmap_mount(tmp_path / "enc", {"key1": "CT(key1)"})
    result = init(cut_short, token_file, "-e", str(folder), "-d", str(tmp_path / "o"), "-n", "x")
    assert result.exit_code == 1
    start = len('{"items": {"key1": {"data": ') + 1  # where the unterminated string starts
    assert (
        f"the decryptor's answer to /api/v2/decrypt, line 1, column {start}: not valid JSON"
        in result.stderr
    )
    assert "super-secret" not in result.output
    assert outputs(tmp_path / "o") == {}


def test_a_file_that_is_not_utf8_is_located_never_quoted(
    kamus: KamusDecryptor, token_file: Path, tmp_path: Path
) -> None:
    folder = configmap_mount(tmp_path / "enc", {"key1": "CT(key1)"})
    (folder / "..data" / "key1").write_bytes(b"CT(k\xe9y1)")
    result = init(kamus.url, token_file, "-e", str(folder), "-d", str(tmp_path / "o"), "-n", "x")
    assert result.exit_code == 1
    assert f"{folder / 'key1'}, line 1, column 5: not valid utf-8 text" in result.stderr
    assert "0xe9" not in result.output
    assert kamus.paths == []  # nothing was sent


def test_a_plaintext_or_token_that_is_not_utf8_is_located_never_quoted(
    kamus: KamusDecryptor, token_file: Path, tmp_path: Path
) -> None:
    """The codec's own message names the byte, and the byte is the secret's (or the token's)."""
    kamus.plaintexts["CT(bin)"] = b"s3\xe9cret"
    folder = configmap_mount(tmp_path / "enc", {"bin": "CT(bin)"})
    result = init(kamus.url, token_file, "-e", str(folder), "-d", str(tmp_path / "o"), "-n", "x")
    assert result.exit_code == 1
    assert "line 1, column 3: not valid utf-8 text: kamus init writes text values only" in (
        result.stderr
    )
    assert "0xe9" not in result.output
    assert "s3" not in result.output.replace(str(tmp_path), "")

    token_file.write_bytes(b"eyJh\xffbG")
    folder = configmap_mount(tmp_path / "enc2", {"key1": "CT(key1)"})
    result = init(kamus.url, token_file, "-e", str(folder), "-d", str(tmp_path / "o2"), "-n", "x")
    assert result.exit_code == 1
    assert f"{token_file}, line 1, column 5: not valid utf-8 text" in result.stderr
    assert "0xff" not in result.output
    assert "eyJh" not in result.output


def test_a_value_sealed_for_another_service_account_is_named_before_any_request(
    kamus: KamusDecryptor, kube_api: KubeApiDouble, tmp_path: Path
) -> None:
    """The most common Kamus mistake, said plainly: the m1 value's identity tag is not the pod's
    (from its token's claims), so nothing is sent."""
    keys = bundle.load(bundle.from_masters([os.urandom(32)], now=NOW, schedule=Schedule()))
    [theirs] = keys.seal([b"s3cret"], "team-a:web", NOW)
    [mine] = keys.seal([b"s3cret"], "team-a:app", NOW)
    token_file = tmp_path / "token"
    token_file.write_text(kube_api.issue_token("team-a", "app"))
    out = tmp_path / "out"

    mount = configmap_mount(tmp_path / "theirs", {"password": theirs, "user": mine})
    result = init(kamus.url, token_file, "-e", str(mount), "-d", str(out), "-f", "files")
    assert result.exit_code == 1
    assert (
        f"{mount / 'password'} was sealed for another service account than this pod's, "
        "team-a:app: seal it for team-a:app (kamus seal -a app -n team-a); nothing was sent"
    ) in result.stderr
    assert kamus.paths == []
    assert outputs(out) == {}

    # A value sealed for the pod goes on to the decryptor (this one does not know it: 400).
    mount = configmap_mount(tmp_path / "mine", {"user": mine})
    result = init(kamus.url, token_file, "-e", str(mount), "-d", str(out), "-f", "files")
    assert kamus.paths
    assert "sealed for another" not in result.stderr
