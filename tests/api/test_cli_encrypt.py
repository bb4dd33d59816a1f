"""``kamus encrypt`` and ``kamus seal`` against a real encryptor app served over HTTPS and HTTP
on 127.0.0.1: TLS verification, certificate pinning, kamus-cli's options, and exit codes."""

import asyncio
import base64
import hashlib
import re
import string
from collections.abc import Iterator
from pathlib import Path

import jwt
import pytest
import yaml
from click.testing import CliRunner, Result
from fastapi import FastAPI, Request
from fastapi.responses import PlainTextResponse, Response
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from crypto import AESKeyManager
from encryptor.app import create_app
from kamus.cli.main import main
from kamus.server.settings import Settings
from tests.k8s_double import KubeApiDouble
from tests.support.servers import Encryptor, serve

KEY = b"k" * 32


def decrypt(ciphertext: str, sa_id: str = "team-a:app") -> str:
    return asyncio.run(AESKeyManager(KEY).decrypt(ciphertext, sa_id)).decode()


@pytest.fixture
def https(tmp_path: Path) -> Iterator[Encryptor]:
    app = create_app(Settings(), key_manager=AESKeyManager(KEY))
    yield from serve(app, tmp_path, tls=True)


@pytest.fixture
def plain_http(tmp_path: Path) -> Iterator[Encryptor]:
    app = create_app(Settings(), key_manager=AESKeyManager(KEY))
    yield from serve(app, tmp_path, tls=False)


def run(*args: str, stdin: str | None = None) -> Result:
    return CliRunner().invoke(main, list(args), input=stdin)


def encrypt_args(server: Encryptor, *extra: str) -> list[str]:
    base = ["encrypt", "-a", "app", "-n", "team-a", "-u", server.url]
    if server.ca_file:
        base += ["--ca-bundle", str(server.ca_file)]
    return [*base, *extra]


def colon(digest: bytes) -> str:
    return ":".join(f"{b:02X}" for b in digest)


def test_prints_only_the_ciphertext(https: Encryptor) -> None:
    result = run(*encrypt_args(https, "-s", "s3cr3t"))
    assert result.exit_code == 0, result.stderr
    assert result.stdout.count("\n") == 1
    assert decrypt(result.stdout.strip()) == "s3cr3t"
    assert "s3cr3t" not in result.stderr


@pytest.mark.parametrize("form", ["sha256", "sha1-node", "sha256-lower-no-colons"])
def test_the_right_pinned_fingerprint_works(https: Encryptor, form: str) -> None:
    pin = {
        "sha256": colon(hashlib.sha256(https.der).digest()),
        "sha1-node": colon(hashlib.sha1(https.der).digest()),  # noqa: S324 - kamus-cli's form
        "sha256-lower-no-colons": hashlib.sha256(https.der).hexdigest(),
    }[form]
    result = run(*encrypt_args(https, "-s", "v", "--cert-fingerprint", pin))
    assert result.exit_code == 0, result.stderr
    assert decrypt(result.stdout.strip()) == "v"


def test_a_wrong_fingerprint_fails_before_anything_is_sent(https: Encryptor) -> None:
    wrong = colon(hashlib.sha256(b"another certificate").digest())
    result = run(*encrypt_args(https, "-s", "s3cr3t", "--cert-fingerprint", wrong))
    assert result.exit_code == 4
    assert "not the pinned" in result.stderr
    assert "nothing was sent" in result.stderr
    assert https.counter.requests == 0


def test_a_malformed_fingerprint_is_a_usage_error(https: Encryptor) -> None:
    result = run(*encrypt_args(https, "-s", "v", "--cert-fingerprint", "not-hex"))
    assert result.exit_code == 2
    assert "SHA-1 or SHA-256" in result.stderr


def test_an_untrusted_certificate_is_refused(https: Encryptor) -> None:
    https.ca_file = None  # the system CAs do not know trustme's
    result = run(*encrypt_args(https, "-s", "v"))
    assert result.exit_code == 3
    assert "--ca-bundle" in result.stderr
    assert https.counter.requests == 0


def test_plain_http_needs_allow_insecure_url(plain_http: Encryptor) -> None:
    refused = run(*encrypt_args(plain_http, "-s", "v"))
    assert refused.exit_code == 2
    assert "--allow-insecure-url" in refused.stderr
    assert plain_http.counter.requests == 0
    allowed = run(*encrypt_args(plain_http, "-s", "v", "--allow-insecure-url"))
    assert allowed.exit_code == 0
    assert decrypt(allowed.stdout.strip()) == "v"


@pytest.mark.parametrize("args", [[], ["-s", "a", "-f", "file"]], ids=["neither", "both"])
def test_exactly_one_secret_source(https: Encryptor, args: list[str]) -> None:
    result = run(*encrypt_args(https, *args))
    assert result.exit_code == 2
    assert "exactly one of --secret and --secret-file" in result.stderr


def test_secret_from_stdin_and_from_file(https: Encryptor, tmp_path: Path) -> None:
    from_stdin = run(*encrypt_args(https, "-s", "-"), stdin="piped ✓")
    assert decrypt(from_stdin.stdout.strip()) == "piped ✓"
    latin = tmp_path / "latin1.txt"
    latin.write_bytes("café".encode("latin-1"))
    from_file = run(*encrypt_args(https, "-f", str(latin), "--secret-file-encoding", "latin-1"))
    assert decrypt(from_file.stdout.strip()) == "café"


def test_a_trailing_newline_warns_without_prompting_in_ci(https: Encryptor, tmp_path: Path) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("line\n")
    warned = run(*encrypt_args(https, "-f", str(secret)))  # stdin is not a TTY: no prompt
    assert warned.exit_code == 0
    assert "ends with a newline" in warned.stderr
    assert decrypt(warned.stdout.strip()) == "line\n"
    quiet = run(*encrypt_args(https, "-f", str(secret), "--ignore-new-line"))
    assert "newline" not in quiet.stderr
    assert decrypt(quiet.stdout.strip()) == "line\n"


def test_output_file_is_not_overwritten_unless_asked(https: Encryptor, tmp_path: Path) -> None:
    target = tmp_path / "out.txt"
    target.write_text("precious")
    refused = run(*encrypt_args(https, "-s", "v", "-o", str(target)))
    assert refused.exit_code == 2
    assert "--overwrite" in refused.stderr
    assert target.read_text() == "precious"
    done = run(*encrypt_args(https, "-s", "v", "-o", str(target), "-O"))
    assert done.exit_code == 0
    assert done.stdout == ""
    assert decrypt(target.read_text()) == "v"


def test_the_server_message_is_shown_with_exit_code_5(https: Encryptor) -> None:
    args = ["encrypt", "-s", "v", "-a", "default", "-n", "team-a", "-u", https.url]
    result = run(*args, "--ca-bundle", str(https.ca_file))
    assert result.exit_code == 5
    assert "400" in result.stderr
    assert "'default' service account cannot be used" in result.stderr


def test_an_unreachable_server_is_exit_code_3() -> None:
    result = run("encrypt", "-s", "v", "-a", "app", "-n", "ns", "-u", "https://127.0.0.1:9")
    assert result.exit_code == 3
    assert "cannot reach https://127.0.0.1:9" in result.stderr


SECRETS = """\
apiVersion: v1
kind: Secret
metadata:
  name: db
  namespace: team-a
  labels: {{app: api}}
  annotations:
    team: payments
    kubectl.kubernetes.io/last-applied-configuration: '{{"secret": "leak"}}'
  resourceVersion: "42"
type: kubernetes.io/basic-auth
stringData:
  username: admin
data:
  password: {password}
---
apiVersion: v1
kind: Secret
metadata: {{name: tls}}
data:
  key.pem: {pem}
"""


def manifest() -> str:
    return SECRETS.format(
        password=base64.b64encode(b"p4ss").decode(),
        pem=base64.b64encode(b"-----BEGIN KEY-----\n").decode(),
    )


def test_seal_writes_kamussecrets_the_controller_can_use(https: Encryptor) -> None:
    args = ["seal", "-a", "app", "-n", "team-a", "-u", https.url, "--ca-bundle", str(https.ca_file)]
    result = run(*args, stdin=manifest())
    assert result.exit_code == 0, result.stderr
    db, tls = yaml.safe_load_all(result.stdout)
    assert db["apiVersion"] == "soluto.com/v1alpha2"
    assert db["kind"] == "KamusSecret"
    assert db["metadata"] == {
        "name": "db",
        "namespace": "team-a",
        "labels": {"app": "api"},
        "annotations": {"team": "payments"},
    }
    assert db["type"] == "kubernetes.io/basic-auth"
    assert db["serviceAccount"] == "app"
    assert decrypt(db["stringData"]["username"]) == "admin"
    # data values are encrypted as their base64 text: the controller decodes after decrypting.
    assert base64.b64decode(decrypt(db["data"]["password"])) == b"p4ss"
    assert tls["metadata"]["namespace"] == "team-a"  # from --namespace
    assert "p4ss" not in result.stdout
    assert "admin" not in result.stdout
    assert "leak" not in result.stdout


def test_seal_to_a_configmap_for_the_init_container(https: Encryptor) -> None:
    args = ["seal", "-a", "app", "-n", "team-a", "-u", https.url, "--ca-bundle", str(https.ca_file)]
    result = run(*args, "--format", "configmap", stdin=manifest())
    db, tls = yaml.safe_load_all(result.stdout)
    assert db["kind"] == "ConfigMap"
    # kamus rewrap and kamus verify read the identity from it.
    assert db["metadata"]["annotations"]["kamus.soluto.com/service-account"] == "app"
    assert decrypt(db["data"]["password"]) == "p4ss"
    assert decrypt(db["data"]["username"]) == "admin"
    assert decrypt(tls["data"]["key.pem"]) == "-----BEGIN KEY-----\n"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\n", "is not a v1 Secret"),
        ("apiVersion: v1\nkind: Secret\nmetadata: {name: x}\n", "has no namespace"),
        ("key: [unclosed", "stdin, line 1, column 15: not valid YAML"),
        ("", "holds no Secret"),
        ("apiVersion: v1\nkind: Secret\nmetadata: x\n", "metadata must be a mapping"),
        (
            "apiVersion: v1\nkind: Secret\nmetadata: {name: x, namespace: y}\nstringData: [a]\n",
            "x.stringData must be a mapping",
        ),
    ],
)
def test_seal_refuses_what_it_cannot_seal(https: Encryptor, text: str, message: str) -> None:
    args = ["seal", "-a", "app", "-u", https.url, "--ca-bundle", str(https.ca_file)]
    result = run(*args, stdin=text)
    assert result.exit_code == 2
    assert message in result.stderr


@pytest.fixture
def kamus_encryptor(tmp_path: Path) -> Iterator[Encryptor]:
    """An original Kamus encryptor: v1 only (no batch API)."""
    app = FastAPI()
    keys = AESKeyManager(KEY)

    @app.post("/api/v1/encrypt")
    async def encrypt(request: Request) -> Response:
        body = await request.json()
        sa = f"{body['namespace']}:{body['service-account']}"
        return PlainTextResponse(await keys.encrypt(body["data"].encode(), sa))

    yield from serve(app, tmp_path, tls=False)


def test_seal_falls_back_to_v1_per_value(kamus_encryptor: Encryptor) -> None:
    args = ["seal", "-a", "app", "-n", "team-a", "-u", kamus_encryptor.url, "--allow-insecure-url"]
    result = run(*args, stdin=manifest())
    assert result.exit_code == 0, result.stderr
    db, _ = yaml.safe_load_all(result.stdout)
    assert decrypt(db["stringData"]["username"]) == "admin"
    assert kamus_encryptor.counter.requests == 1 + 3  # one v2 try, then v1 per value


# -- the caller's token ------------------------------------------------------------------------


def make_token(**claims: object) -> str:
    """A JWT as the CLI sees it: the encryptor verifies tokens, the CLI only reads audiences."""
    return jwt.encode(claims, "k" * 32, algorithm="HS256")


BOUND = make_token(aud=["kamus-encryptor"], iss="https://oidc.example", sub="ci-deployer")


@pytest.fixture
def token_file(tmp_path: Path) -> Path:
    path = tmp_path / "token"
    path.write_text(f"  {BOUND}\n")
    return path


@pytest.fixture
def user_kubeconfig(kube_api: KubeApiDouble, tmp_path: Path) -> Path:
    """A kubeconfig whose user has a token the Kubernetes API double issued."""
    return kube_api.write_kubeconfig(
        tmp_path / "user.kubeconfig", token=kube_api.issue_user_token("jane@example.com")
    )


def kubeconfig_run(kubeconfig: Path, *args: str, stdin: str | None = None) -> Result:
    return CliRunner(env={"KUBECONFIG": str(kubeconfig)}).invoke(main, list(args), input=stdin)


SECRET_YAML = "apiVersion: v1\nkind: Secret\nmetadata: {name: db}\nstringData: {password: s3cr3t}\n"


@pytest.mark.parametrize("command", ["encrypt", "seal"])
@pytest.mark.parametrize("source", ["token-file", "kubeconfig"])
def test_a_token_is_never_sent_over_http_with_allow_insecure_url_alone(
    plain_http: Encryptor, token_file: Path, user_kubeconfig: Path, command: str, source: str
) -> None:
    """Loopback included: --allow-insecure-url covers the secret, never the credential."""
    token_args = ["--token-file", str(token_file)] if source == "token-file" else []
    if source == "kubeconfig":
        token_args = ["--kubeconfig-token"]
    if command == "encrypt":
        args = encrypt_args(plain_http, "-s", "s3cr3t")
    else:
        args = ["seal", "-a", "app", "-n", "team-a", "-u", plain_http.url]
    result = kubeconfig_run(
        user_kubeconfig, *args, "--allow-insecure-url", *token_args, stdin=SECRET_YAML
    )
    assert result.exit_code == 2, result.output
    assert "refusing to send your token to the plain-http URL" in result.stderr
    assert "--allow-token-over-http" in result.stderr
    assert "--token-file" in result.stderr
    assert plain_http.counter.requests == 0
    assert result.stdout == ""


def test_allow_token_over_http_sends_it_with_a_warning(
    plain_http: Encryptor, token_file: Path
) -> None:
    args = encrypt_args(plain_http, "-s", "v", "--allow-insecure-url", "--token-file")
    result = run(*args, str(token_file), "--allow-token-over-http")
    assert result.exit_code == 0, result.stderr
    assert decrypt(result.stdout.strip()) == "v"
    assert "in clear text" in result.stderr
    assert "kubectl port-forward" in result.stderr
    assert plain_http.counter.authorizations == [f"Bearer {BOUND}"]
    assert BOUND not in result.output


def test_token_file_sends_its_token_stripped(https: Encryptor, token_file: Path) -> None:
    """A token bound to the encryptor's audience: sent as it is, and no warning."""
    result = run(*encrypt_args(https, "-s", "v", "--token-file", str(token_file)))
    assert result.exit_code == 0, result.stderr
    assert https.counter.authorizations == [f"Bearer {BOUND}"]
    assert "warning" not in result.stderr
    from_env = CliRunner(env={"KAMUS_TOKEN_FILE": str(token_file)}).invoke(
        main, encrypt_args(https, "-s", "v")
    )
    assert from_env.exit_code == 0, from_env.stderr
    assert https.counter.authorizations == [f"Bearer {BOUND}"] * 2


@pytest.mark.parametrize(
    ("content", "message"),
    [(None, "(No such file or directory)"), ("  \n", "is empty; write a token into it")],
    ids=["missing", "empty"],
)
def test_an_unusable_token_file_is_a_usage_error(
    https: Encryptor, tmp_path: Path, content: str | None, message: str
) -> None:
    path = tmp_path / "token"
    if content is not None:
        path.write_text(content)
    result = run(*encrypt_args(https, "-s", "v", "--token-file", str(path)))
    assert result.exit_code == 2
    assert result.stderr.startswith("kamus: --token-file: ")
    assert str(path) in result.stderr
    assert message in result.stderr
    assert https.counter.requests == 0


def test_token_file_and_kubeconfig_token_are_mutually_exclusive(
    https: Encryptor, token_file: Path, user_kubeconfig: Path
) -> None:
    args = encrypt_args(https, "-s", "v", "--kubeconfig-token")
    given = kubeconfig_run(user_kubeconfig, *args, "--token-file", str(token_file))
    from_env = CliRunner(
        env={"KUBECONFIG": str(user_kubeconfig), "KAMUS_TOKEN_FILE": str(token_file)}
    ).invoke(main, args)
    for result in (given, from_env):
        assert result.exit_code == 2
        assert "--token-file (or $KAMUS_TOKEN_FILE) and --kubeconfig-token are mutually" in (
            result.stderr
        )
    assert https.counter.requests == 0


ISSUER = "https://oidc.example/issuer"


@pytest.mark.parametrize(
    ("token", "why"),
    [
        (make_token(iss=ISSUER, sub="system:serviceaccount:ci:deployer"), "has no audience"),
        (make_token(aud=[ISSUER + "/"], iss=ISSUER, sub="ci"), "are the apiserver's"),
        (make_token(aud="https://kubernetes.default.svc", iss=ISSUER), "are the apiserver's"),
        (
            make_token(aud=["https://kubernetes.default.svc.cluster.local"], iss=ISSUER),
            "are the apiserver's",
        ),
        (
            make_token(aud=["kamus-encryptor", "https://kubernetes.default.svc"], iss=ISSUER),
            "include the apiserver's",
        ),
        ("k8s-aws-v1.aHR0cHM6Ly9zdHMuYW1hem9uYXdzLmNvbS8_QWN0aW9u", "not a JWT"),
    ],
    ids=["no-aud", "aud-is-iss", "default-svc", "cluster-local", "mixed", "not-jwt"],
)
def test_a_token_not_bound_to_the_encryptor_gets_a_warning(
    https: Encryptor, tmp_path: Path, token: str, why: str
) -> None:
    path = tmp_path / "token"
    path.write_text(token)
    result = run(*encrypt_args(https, "-s", "v", "--token-file", str(path)))
    assert result.exit_code == 0, result.stderr
    assert "kamus: warning: the token" in result.stderr
    assert why in result.stderr
    assert "kubectl create token <sa> --audience kamus-encryptor" in result.stderr
    assert "--token-file" in result.stderr
    # Only audiences are ever shown: never the token, its subject or its issuer.
    for never in (token, token.split(".")[-1], "deployer", 'oidc.example/issuer"'):
        assert never not in result.output


def test_a_kubeconfig_token_for_its_cluster_url_gets_a_warning(
    https: Encryptor, kube_api: KubeApiDouble, tmp_path: Path
) -> None:
    """The kubeconfig's own cluster URL is the apiserver's audience too (kubeadm, kind...)."""
    token = make_token(aud=[kube_api.url], iss=ISSUER, sub="jane")
    kubeconfig = kube_api.write_kubeconfig(tmp_path / "kubeconfig", token=token)
    result = kubeconfig_run(kubeconfig, *encrypt_args(https, "-s", "v", "--kubeconfig-token"))
    assert result.exit_code == 0, result.stderr
    assert f'audiences ["{kube_api.url}"] are the apiserver' in result.stderr
    assert "--audience kamus-encryptor" in result.stderr
    assert https.counter.authorizations == [f"Bearer {token}"]
    assert token not in result.output


# -- errors about the input never quote it -----------------------------------------------------

PASSWORD_LINE = "  password: {value}\n"
MALFORMED_AROUND_SECRET = [
    ('"', ""),  # an unclosed quote
    ("'", "' x"),
    ("[", ""),  # an unclosed flow sequence
    ("{", ", a"),
    ("", ": x"),  # a mapping value where none may be
    ("*", ""),  # an alias to no anchor: PyYAML names it
    ("!", " x"),  # an unknown tag: PyYAML names it
    ("&", " &x y"),
    ("@", ""),
    ("`", ""),
    ("%", ""),
    ("", "\t: x"),
    ("", "\n - x"),
    ("", "\x07"),
]


@given(
    secret=st.text(alphabet=string.ascii_letters, min_size=12, max_size=40),
    around=st.sampled_from(MALFORMED_AROUND_SECRET),
    in_data=st.booleans(),
    lines_before=st.integers(min_value=0, max_value=3),
)
@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
def test_seal_never_prints_the_secret_of_a_malformed_manifest(
    https: Encryptor, secret: str, around: tuple[str, str], in_data: bool, lines_before: int
) -> None:
    prefix, suffix = around
    text = (
        "apiVersion: v1\nkind: Secret\nmetadata:\n  name: db\n  namespace: team-a\n"
        + "".join(f"  label{i}: x\n" for i in range(lines_before))
        + ("data:\n" if in_data else "stringData:\n")
        + PASSWORD_LINE.format(value=prefix + secret + suffix)
    )
    try:
        list(yaml.safe_load_all(text))
    except yaml.YAMLError:
        pass
    else:
        assume(False)  # well-formed after all: not what this test is about
    args = ["seal", "-a", "app", "-u", https.url, "--ca-bundle", str(https.ca_file)]
    result = run(*args, stdin=text)
    assert result.exit_code == 2, result.output
    assert secret not in result.output
    assert result.stdout == ""
    assert re.fullmatch(r"kamus: stdin, line \d+, column \d+: not valid YAML\n", result.stderr), (
        result.stderr
    )
    assert https.counter.requests == 0


def test_seal_names_the_line_of_a_manifest_file(https: Encryptor, tmp_path: Path) -> None:
    manifest_file = tmp_path / "secret.yaml"
    manifest_file.write_text("apiVersion: v1\nkind: Secret\nstringData:\n  password: *hunter22\n")
    args = ["seal", "-a", "app", "-u", https.url, "--ca-bundle", str(https.ca_file)]
    result = run(*args, str(manifest_file))
    assert result.exit_code == 2
    assert result.stderr == f"kamus: {manifest_file}, line 4, column 13: not valid YAML\n"


def test_seal_reports_a_value_yaml_cannot_build_without_a_traceback(
    https: Encryptor, tmp_path: Path
) -> None:
    """PyYAML reads 2024-02-30 as a date and fails outside its own error types, with the value
    in the message."""
    manifest_file = tmp_path / "secret.yaml"
    manifest_file.write_text("apiVersion: v1\nkind: Secret\nstringData:\n  pin: 2024-02-30\n")
    args = ["seal", "-a", "app", "-u", https.url, "--ca-bundle", str(https.ca_file)]
    result = run(*args, str(manifest_file))
    assert result.exit_code == 2
    assert result.stderr == (
        f"kamus: {manifest_file}: not valid YAML (a value cannot be read; quote it to make it "
        "text)\n"
    )


@pytest.mark.parametrize("where", ["seal", "secret-file", "stdin"])
def test_input_that_is_not_utf8_is_located_never_quoted(
    https: Encryptor, tmp_path: Path, where: str
) -> None:
    """A codec's message names the offending byte, which is a byte of the secret."""
    data = b"line one\nmot de passe: s3cr\xe9t\n"
    path = tmp_path / "input"
    path.write_bytes(data)
    if where == "seal":
        args = ["seal", "-a", "app", "-u", https.url, "--ca-bundle", str(https.ca_file)]
        result = run(*args, str(path))
        source = str(path)
    elif where == "secret-file":
        result = run(*encrypt_args(https, "-f", str(path)))
        source = str(path)
    else:
        result = CliRunner().invoke(main, encrypt_args(https, "-s", "-"), input=data)
        source = "stdin"
    assert result.exit_code == 2, result.output
    assert result.stderr == f"kamus: {source}, line 2, column 19: not valid utf-8 text\n"
    assert "0xe9" not in result.output
    assert https.counter.requests == 0
