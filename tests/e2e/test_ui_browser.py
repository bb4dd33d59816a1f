"""Issue 23: the encrypt page (``GET /ui``, docs/ui.md) in a real browser, against real
processes: Debian's Chromium driven by Playwright, the encryptor and the decryptor as ``kamus
serve`` processes, and the KamusSecret controller, all with one AES key and the Kubernetes API
double. What the page encrypts opens in the decryptor as its service account, and the snippets it
writes become Secrets.

One browser and one deployment serve the whole module; each test opens its own browser context
(nothing shared between tests but the processes)."""

import base64
import hashlib
import importlib.util
import json
import re
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

if shutil.which("chromium") is None or importlib.util.find_spec("playwright") is None:
    pytest.skip(
        "the encrypt page's browser tests need Debian's chromium and the playwright package "
        f"(chromium: {shutil.which('chromium') or 'missing'}; deploy/tools/install-system-tools.sh "
        "installs it); tests/api/test_ui.py still checks the page's files and headers",
        allow_module_level=True,
    )

from fastapi import FastAPI
from fastapi.responses import HTMLResponse, Response
from playwright.sync_api import Browser, Request, expect, sync_playwright

from kamus.server.identity import (
    DEFAULT_SERVICE_ACCOUNT_REFUSAL,
    SERVICE_ACCOUNT_ANNOTATION,
    check_namespace,
    check_service_account,
)
from tests.k8s_double import KubeApiDouble
from tests.support import leaks
from tests.support.cluster import GROUP, PLURAL, VERSION, Cluster, controller_env, eventually
from tests.support.encrypt_page import OTHER_HOST, EncryptPage, Session, launch, session
from tests.support.processes import Deployment, Service, deploy, kamus_serve
from tests.support.servers import ThreadedServer
from tests.support.settings import new_key

TEXT = "s3cr3t-pa55w0rd-from-the-page"
EMOJI = "héllo 🤐 секрет"
MULTILINE = "first line of the secret\nsecond line\n\ttabbed third\n"
BINARY = bytes(range(256))
leaks.register(TEXT, EMOJI, MULTILINE)
KAMUSSECRETS = {"group": "soluto.com", "resource": "kamussecrets", "verb": "create"}
# The screenshots' encryptor: a fixed key and no key renewal, so the key id and the anchor the
# page shows, and so the PNGs, are the same on every run.
SCREENSHOT_KEY = base64.b64encode(hashlib.sha256(b"kamus docs/ui.md screenshots").digest()).decode()
leaks.register(SCREENSHOT_KEY)
# The ciphertext is random: each of its lines goes behind a bar, as Playwright's
# mask=[locator] would hide it, but line by line rather than over the span's bounding box (which
# would hide the key in front of it too). Set through the CSSOM, which the page's CSP allows.
REDACT = """() => {
    const span = document.querySelector("[data-test=ciphertext]");
    span.style.color = "transparent";
    span.style.background = "#c9ced6";
}"""
# The text area's resize grip is drawn with a sub-pixel offset that varies between runs (two
# runs on one machine differed in its 8x8 pixels alone): hidden, so the PNGs stay the same.
NO_GRIP = """() => {
    for (const area of document.querySelectorAll("textarea")) area.style.resize = "none";
}"""
IMAGES = Path(__file__).resolve().parents[2] / "docs" / "images"
UI_PATHS = {"/ui", "/ui/ui.css", "/ui/ui.js", "/ui/favicon.svg", "/ui/info.json", "/api/v1/encrypt"}


# -- the processes and the browser, once per module ------------------------------------------


@pytest.fixture(scope="module")
def key() -> str:
    return new_key()


@pytest.fixture(scope="module")
def kube() -> Iterator[KubeApiDouble]:
    with KubeApiDouble() as double:
        yield double


@pytest.fixture(scope="module")
def deployment(
    kube: KubeApiDouble, key: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Deployment]:
    tmp = tmp_path_factory.mktemp("ui")
    with deploy(kube, tmp, {"KeyManagement__AES__Key": key}) as running:
        yield running


@pytest.fixture(scope="module")
def controller(
    kube: KubeApiDouble, key: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Cluster]:
    """The KamusSecret controller, with the deployment's key, watching the same double."""
    tmp = tmp_path_factory.mktemp("ui-controller")
    with ExitStack() as stack:
        env = controller_env(kube, tmp, key, Controller__Identity="controller-ui")
        stack.enter_context(kamus_serve("controller", env, tmp / "controller.log"))
        kube.wait_for_watches(2)
        cluster = Cluster(kube, kube.write_kubeconfig(tmp / "test.kubeconfig"), key)
        stack.callback(cluster.close)
        yield cluster


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as playwright:
        launched = launch(playwright)
        try:
            yield launched
        finally:
            launched.close()


@pytest.fixture
def open_session(browser: Browser) -> Iterator[Callable[..., Session]]:
    """New browser contexts for a test; each must end with no script error and, unless the test
    says otherwise, no CSP violation (the page's own script and style are allowed)."""
    with ExitStack() as stack:
        opened: list[Session] = []

        def open_one(**options: Any) -> Session:
            one = stack.enter_context(session(browser, **options))
            opened.append(one)
            return one

        yield open_one
        for one in opened:
            assert one.page_errors == []
            if not one.csp_expected:
                assert one.csp_reports() == []


@pytest.fixture
def ui(open_session: Callable[..., Session], deployment: Deployment) -> EncryptPage:
    return EncryptPage(open_session().page).open(deployment.encryptor.url)


def api_refusal(deployment: Deployment, namespace: str, sa: str) -> str:
    """What the encryptor answers for these names."""
    answer = deployment.encrypt("x", namespace, sa)
    assert answer.status_code == 400, answer.text
    detail: str = answer.json()["detail"]
    return detail


def identity_refusal(namespace: str, sa: str) -> str:
    """The same, from kamus.server.identity: each field's message, in the model's order, and
    the default service account only once both names are valid."""
    parts = []
    checks = [
        ("service-account", check_service_account, sa),
        ("namespace", check_namespace, namespace),
    ]
    for field, check, value in checks:
        try:
            check(value)
        except ValueError as exc:
            parts.append(f"{field}: {exc}")
    if not parts and sa == "default":
        parts.append(f"service-account: {DEFAULT_SERVICE_ACCOUNT_REFUSAL}")
    return "; ".join(parts)


def with_clipboard(open_session: Callable[..., Session], url: str) -> tuple[Session, EncryptPage]:
    """A session whose page may read and write the clipboard, at the page of ``url``."""
    opened = open_session()
    opened.context.grant_permissions(["clipboard-read", "clipboard-write"], origin=url)
    return opened, EncryptPage(opened.page).open(url)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


# -- the round trip ------------------------------------------------------------------------


def test_text_emoji_multiline_and_a_binary_file_open_in_the_decryptor(
    ui: EncryptPage, deployment: Deployment, kube: KubeApiDouble
) -> None:
    for index, value in enumerate([TEXT, EMOJI, MULTILINE]):
        namespace, sa = "team-ui", f"app-{index}"
        ciphertext = ui.encrypt(namespace, sa, value)
        assert ciphertext.startswith("kamus$m1$")
        size = len(value.encode())
        assert f"Encrypted {size} bytes" in ui.el("status").text_content()
        # Done with the plaintext: the field is empty again.
        assert ui.label("Secret text").input_value() == ""
        opened = deployment.decrypt(ciphertext, kube.issue_token(namespace, sa))
        assert opened.status_code == 200, opened.text
        assert opened.text == value
        # As no other service account.
        other = deployment.decrypt(ciphertext, kube.issue_token(namespace, "someone-else"))
        assert other.status_code == 400

    ui.fill("team-ui", "files", BINARY)
    assert ui.el("file-size").text_content() == ("blob.bin: 256 bytes, sent as 344 bytes of base64")
    ui.submit()
    ciphertext = ui.output("Ciphertext")
    opened = deployment.decrypt(ciphertext, kube.issue_token("team-ui", "files"))
    assert opened.status_code == 200, opened.text
    assert base64.b64decode(opened.text, validate=True) == BINARY
    assert ui.label("Secret file").input_value() == ""
    # A file goes in a KamusSecret's data, under its own name unless another key is given.
    assert yaml.safe_load(ui.output("KamusSecret"))["data"] == {"blob.bin": ciphertext}


# -- the snippets ----------------------------------------------------------------------------


def test_each_output_form_is_valid_yaml_and_the_controller_makes_the_secret(
    ui: EncryptPage, deployment: Deployment, kube: KubeApiDouble, controller: Cluster
) -> None:
    namespace, sa = "team-yaml", "billing"
    ciphertext = ui.encrypt(namespace, sa, EMOJI)
    ui.label("KamusSecret").check()
    ui.label("Name").fill("billing-db")
    ui.label("Key").fill("password")
    kamus_secret = yaml.safe_load(ui.output("KamusSecret"))
    assert kamus_secret == {
        "apiVersion": "soluto.com/v1alpha2",
        "kind": "KamusSecret",
        "metadata": {"name": "billing-db", "namespace": namespace},
        "type": "Opaque",
        "serviceAccount": sa,
        "stringData": {"password": ciphertext},
    }
    controller.custom.create_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL, kamus_secret
    )

    config_map = yaml.safe_load(ui.output("ConfigMap"))
    assert config_map == {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": "billing-db",
            "namespace": namespace,
            "annotations": {SERVICE_ACCOUNT_ANNOTATION: sa},
        },
        "data": {"password": ciphertext},
    }
    controller.core.create_namespaced_config_map(namespace, config_map)  # the apiserver takes it
    opened = deployment.decrypt(config_map["data"]["password"], kube.issue_token(namespace, sa))
    assert opened.text == EMOJI

    # A file goes in a KamusSecret's data, which the controller decodes to the file's bytes...
    ui.fill(namespace, sa, BINARY)
    ui.submit()
    ui.label("KamusSecret").check()
    ui.label("Name").fill("blob")
    ui.label("Key").fill("payload.bin")
    file_secret = yaml.safe_load(ui.output("KamusSecret"))
    assert file_secret["data"] == {"payload.bin": ui.el("ciphertext").text_content()}
    assert "stringData" not in file_secret
    controller.custom.create_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL, file_secret
    )
    # ... and never in a ConfigMap, whose values the init container writes as text.
    ui.label("ConfigMap").check()
    expect(ui.el("output")).to_be_hidden()
    expect(ui.el("copy")).to_be_disabled()
    expect(ui.el("output-note")).to_contain_text("A file cannot go in a ConfigMap")

    assert eventually(lambda: controller.data(namespace, "billing-db")) == {
        "password": b64(EMOJI.encode())
    }
    assert eventually(lambda: controller.data(namespace, "blob")) == {"payload.bin": b64(BINARY)}
    ready = eventually(lambda: controller.ready(namespace, "blob"))
    assert ready["status"] == "True", ready


def test_names_for_the_snippets_are_checked_and_quoted_where_yaml_needs_it(
    ui: EncryptPage,
) -> None:
    ciphertext = ui.encrypt("team-quote", "app", TEXT)
    ui.label("KamusSecret").check()
    ui.label("Name").fill("Not_A_Name")
    expect(ui.el("object-name-error")).to_be_visible()
    expect(ui.el("copy")).to_be_disabled()
    ui.label("Name").fill("123")  # a valid name that YAML reads as a number unless quoted
    for key in ("true", "1e3", ".env", "-dash"):
        ui.label("Key").fill(key)
        loaded = yaml.safe_load(ui.output("KamusSecret"))
        assert loaded["metadata"]["name"] == "123"
        assert loaded["stringData"] == {key: ciphertext}
    ui.label("Key").fill("..hidden")
    expect(ui.el("key-name-error")).to_be_visible()
    # Names that start like a number: hexadecimal, octal, a date, an exponent. All are valid
    # Kubernetes names, and YAML 1.1 (PyYAML, go-yaml) reads each unquoted as no string.
    ciphertext = ui.encrypt("0x1f", "0xc0ffee", TEXT)
    ui.label("KamusSecret").check()
    ui.label("Name").fill("0xdead")
    for key in ("0x1F", "0o17", "2001-12-14", "1e3", "-1", ".5", "0b101", "1_000"):
        ui.label("Key").fill(key)
        loaded = yaml.safe_load(ui.output("KamusSecret"))
        assert loaded["metadata"] == {"name": "0xdead", "namespace": "0x1f"}, key
        assert loaded["serviceAccount"] == "0xc0ffee"
        assert loaded["stringData"] == {key: ciphertext}
    ui.label("ConfigMap").check()
    loaded = yaml.safe_load(ui.output("ConfigMap"))
    assert loaded["metadata"]["namespace"] == "0x1f"
    assert loaded["data"] == {"1_000": ciphertext}


# -- errors ----------------------------------------------------------------------------------

BAD_NAMES = [
    ("Team-A", "app"),
    ("a" * 64, "app"),
    ("team-a", "x" * 254),
    ("team-a", "App_1"),
    ("-team", "app."),
    ("team-a", "default"),
]


def test_bad_names_show_the_apis_message_and_send_nothing(
    ui: EncryptPage, deployment: Deployment
) -> None:
    sent: list[str] = []
    ui.page.on("request", lambda request: sent.append(request.url))
    for namespace, sa in BAD_NAMES:
        expected = api_refusal(deployment, namespace, sa)
        assert expected == identity_refusal(namespace, sa)
        ui.fill(namespace, sa, TEXT)
        ui.submit()
        assert ui.error() == expected, (namespace, sa)
        expect(ui.el("result")).not_to_contain_text("kamus$")
    assert sent == []
    # The field says what is wrong with it, and is marked invalid.
    expect(ui.label("Service account")).to_have_attribute("aria-invalid", "true")
    expect(ui.el("service-account-error")).to_have_text(DEFAULT_SERVICE_ACCOUNT_REFUSAL)


@pytest.fixture(scope="module")
def limited(key: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    tmp = tmp_path_factory.mktemp("ui-limited")
    env = {"KeyManagement__AES__Key": key, "Encryptor__RateLimit": "2/minute"}
    with kamus_serve("encryptor", env, tmp / "encryptor.log") as service:
        yield service


def test_a_429_shows_the_apis_message_and_the_wait(
    open_session: Callable[..., Session], limited: Service
) -> None:
    ui = EncryptPage(open_session().page).open(limited.url)
    for _ in range(2):
        ui.encrypt("team-limit", "app", TEXT)
    ui.fill("team-limit", "app", TEXT)
    ui.submit()
    expect(ui.el("error-title")).to_have_text("HTTP 429 · Too many requests")
    shown = ui.error()
    assert shown is not None
    match = re.fullmatch(r"too many values from this address: .*; retry in (\d+)s", shown)
    assert match, shown
    # The wait, from Retry-After: the header the message's number comes from.
    retry = ui.el("retry-after")
    expect(retry).to_be_visible()
    assert retry.get_attribute("data-seconds") == match.group(1)
    assert f"wait {match.group(1)} second" in retry.text_content()
    # Word for word what the API answers (but the seconds, which count down).
    again = httpx.post(
        f"{limited.url}/api/v1/encrypt",
        json={"data": "x", "service-account": "app", "namespace": "team-limit"},
    )
    assert again.status_code == 429
    seconds = re.compile(r"\d+s$")
    assert seconds.sub("", again.json()["detail"]) == seconds.sub("", shown)
    # The value is kept for the retry.
    assert ui.label("Secret text").input_value() == TEXT


SMALL_LIMIT = 2048


@pytest.fixture(scope="module")
def small(key: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    tmp = tmp_path_factory.mktemp("ui-small")
    env = {"KeyManagement__AES__Key": key, "Server__MaxRequestBodyBytes": str(SMALL_LIMIT)}
    with kamus_serve("encryptor", env, tmp / "encryptor.log") as service:
        yield service


def test_a_value_over_the_body_limit_is_refused_before_it_is_sent(
    open_session: Callable[..., Session], small: Service
) -> None:
    """The limit comes from info.json: a file over it is flagged when chosen and refused by its
    size before the browser reads it; a text is refused by the exact body it would send. Neither
    is uploaded to be answered 413."""
    ui = EncryptPage(open_session().page).open(small.url)
    sent: list[str] = []
    ui.page.on("request", lambda request: sent.append(request.url))
    big = bytes(range(256)) * 8  # 2,048 bytes: 2,732 of base64
    ui.fill("team-ui", "big", big)
    assert ui.el("file-size").text_content() == (
        "blob.bin: 2,048 bytes (2.0 KiB), sent as 2,732 bytes (2.7 KiB) of base64, "
        "over this encryptor's limit of 2,048 bytes (2.0 KiB)"
    )
    ui.submit()
    expect(ui.el("error-title")).to_have_text("The value is too large")
    assert ui.error() == (
        "The file is 2,048 bytes (2.0 KiB), 2,732 bytes (2.7 KiB) of base64; this encryptor "
        "takes requests of at most 2,048 bytes (2.0 KiB). Nothing was sent."
    )
    text = "x" * 2000  # fits the limit alone, not with the names and the JSON around it
    ui.fill("team-ui", "big", text)
    ui.submit()
    assert ui.error() == (
        "The request would be 2,057 bytes (2.0 KiB); this encryptor takes at most "
        "2,048 bytes (2.0 KiB). Nothing was sent."
    )
    assert sent == []
    # The page's count is the encryptor's: the same body, sent past the page, is answered 413.
    body = {"data": text, "service-account": "big", "namespace": "team-ui"}
    assert len(json.dumps(body, separators=(",", ":")).encode()) == 2057
    refused = httpx.post(f"{small.url}/api/v1/encrypt", json=body)
    assert refused.status_code == 413, refused.text
    # A value that fits is sent, and encrypted.
    assert ui.encrypt("team-ui", "small", TEXT).startswith("kamus$m1$")


def test_a_file_that_cannot_be_read_any_more_is_reported(ui: EncryptPage, tmp_path: Path) -> None:
    chosen = tmp_path / "gone.bin"
    chosen.write_bytes(b"read once, then removed")
    ui.label("Namespace").fill("team-ui")
    ui.label("Service account").fill("files")
    ui.label("File").check()
    ui.label("Secret file").set_input_files(str(chosen))
    chosen.unlink()
    ui.submit()
    expect(ui.el("error-title")).to_have_text("The file could not be read")
    assert (ui.error() or "").endswith("Choose it again.")
    expect(ui.el("result")).not_to_contain_text("kamus$")


@pytest.fixture(scope="module")
def behind_a_login_proxy(deployment: Deployment) -> Iterator[str]:
    """A proxy in front of the encryptor that passes the page through and answers the encrypt
    request with its own login page, 200 and HTML, as a single-sign-on proxy does."""
    app = FastAPI()

    @app.get("/ui{rest:path}")
    def page(rest: str) -> Response:
        answer = httpx.get(f"{deployment.encryptor.url}/ui{rest}")
        return Response(answer.content, answer.status_code, headers=dict(answer.headers))

    @app.post("/api/v1/encrypt")
    def login() -> Response:
        return HTMLResponse("<html><body><form>Sign in to continue</form></body></html>")

    server = ThreadedServer(app)
    server.start()
    try:
        yield f"http://127.0.0.1:{server.port}"
    finally:
        server.stop()


def test_a_200_that_is_not_a_ciphertext_keeps_the_value(
    open_session: Callable[..., Session], behind_a_login_proxy: str
) -> None:
    ui = EncryptPage(open_session().page).open(behind_a_login_proxy)
    ui.fill("team-ui", "app", TEXT)
    ui.submit()
    expect(ui.el("error-title")).to_have_text("The answer is not a ciphertext")
    assert ui.error() == (
        "HTTP 200 (text/html; charset=utf-8): something in front of the encryptor may have "
        "answered. Your value is kept; nothing was encrypted."
    )
    assert ui.label("Secret text").input_value() == TEXT
    expect(ui.el("result")).not_to_contain_text("Sign in")


# -- what the page does in the browser -------------------------------------------------------


def test_a_whole_session_asks_only_its_own_origin_and_stores_nothing(
    open_session: Callable[..., Session], deployment: Deployment
) -> None:
    origin = deployment.encryptor.url
    recorded, ui = with_clipboard(open_session, origin)
    ui.encrypt("team-session", "app", TEXT)
    for form in ("Ciphertext", "KamusSecret", "ConfigMap"):
        ui.output(form)
        ui.el("copy").click()
        expect(ui.el("copied")).to_have_text("Copied")
    ui.encrypt("team-session", "app", BINARY)
    ui.el("copy").click()
    expect(ui.el("copied")).to_have_text("Copied")

    urls = [request.url for request in recorded.requests]
    assert urls, "no request was recorded"
    assert [url for url in urls if not url.startswith(origin + "/")] == []
    assert {httpx.URL(url).path for url in urls} <= UI_PATHS
    assert sum(1 for r in recorded.requests if r.url.endswith("/api/v1/encrypt")) == 2
    assert ui.stored() == {
        "localStorage": 0,
        "sessionStorage": 0,
        "cookie": "",
        "indexedDB": 0,
        "caches": 0,
    }
    state = recorded.context.storage_state()
    assert state["cookies"] == []
    assert state["origins"] == []


def test_the_csp_blocks_an_injected_inline_script(
    open_session: Callable[..., Session], deployment: Deployment
) -> None:
    recorded = open_session()
    recorded.csp_expected = True
    ui = EncryptPage(recorded.page).open(deployment.encryptor.url)
    assert recorded.csp_reports() == []  # the page itself runs under the policy
    ui.page.evaluate(
        """() => {
            window.__violations = [];
            document.addEventListener("securitypolicyviolation",
                (e) => window.__violations.push(e.violatedDirective));
            const script = document.createElement("script");
            script.textContent = "window.__pwned = 1";
            document.body.appendChild(script);
            const box = document.createElement("div");
            box.innerHTML = '<img src="ui/favicon.svg" onload="window.__pwned = 2">';
            document.body.appendChild(box);
        }"""
    )
    deadline = time.monotonic() + 10
    while len(ui.page.evaluate("window.__violations")) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    violations = ui.page.evaluate("window.__violations")
    assert len(violations) == 2
    assert all(v.startswith("script-src") for v in violations), violations
    assert ui.page.evaluate("typeof window.__pwned") == "undefined"
    assert recorded.csp_reports()


@pytest.fixture(scope="module")
def guarded(
    kube: KubeApiDouble, key: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Service]:
    """An encryptor with Encryptor__Authentication=kubernetes, asking the double."""
    tmp = tmp_path_factory.mktemp("ui-auth")
    env = {
        "KeyManagement__AES__Key": key,
        "Encryptor__Authentication": "kubernetes",
        "KUBECONFIG": str(kube.write_kubeconfig(tmp / "kubeconfig")),
    }
    with kamus_serve("encryptor", env, tmp / "encryptor.log") as service:
        yield service


def test_with_authentication_the_token_is_sent_on_loopback_and_refused_over_plain_http(
    open_session: Callable[..., Session],
    guarded: Service,
    deployment: Deployment,
    kube: KubeApiDouble,
) -> None:
    jane = kube.issue_user_token("jane@example.com")
    kube.grant("jane@example.com", namespace="team-auth", **KAMUSSECRETS)
    recorded = open_session()
    ui = EncryptPage(recorded.page).open(guarded.url)
    token = ui.label("Kubernetes token")
    expect(token).to_be_enabled()
    expect(token).to_have_attribute("type", "password")
    expect(ui.el("token-note")).to_be_hidden()

    # Without a token: the encryptor's own 401.
    ui.fill("team-auth", "app", TEXT)
    ui.submit()
    expect(ui.el("error-title")).to_contain_text("HTTP 401")
    body = {"data": "x", "service-account": "app", "namespace": "team-auth"}
    assert ui.error() == httpx.post(f"{guarded.url}/api/v1/encrypt", json=body).json()["detail"]

    token.fill(jane)
    ui.submit()
    assert ui.error() is None, ui.error()
    ciphertext = ui.output("Ciphertext")
    opened = deployment.decrypt(ciphertext, kube.issue_token("team-auth", "app"))
    assert opened.text == TEXT
    encrypts: list[Request] = [r for r in recorded.requests if r.url.endswith("/api/v1/encrypt")]
    assert [r.all_headers().get("authorization") for r in encrypts] == [None, f"Bearer {jane}"]

    # RBAC's 403 for a namespace jane may not write to, in the encryptor's words.
    ui.fill("team-other", "app", TEXT)
    ui.submit()
    expect(ui.el("error-title")).to_contain_text("HTTP 403")
    assert "jane@example.com may not encrypt for namespace team-other" in (ui.error() or "")
    assert ui.stored()["localStorage"] == 0

    # Over plain http from a name that is not loopback, the field is off, and says why.
    port = httpx.URL(guarded.url).port
    remote = EncryptPage(open_session().page).open(f"http://{OTHER_HOST}:{port}")
    expect(remote.label("Kubernetes token")).to_be_disabled()
    note = remote.el("token-note")
    expect(note).to_be_visible()
    expect(note).to_contain_text(f"plain http from {OTHER_HOST}")
    expect(note).to_contain_text("clear text")


def test_the_token_field_is_not_there_without_authentication(ui: EncryptPage) -> None:
    expect(ui.el("token-field")).to_be_hidden()


# -- keyboard and labels ---------------------------------------------------------------------


def test_keyboard_only_with_visible_focus_and_a_label_for_every_control(
    open_session: Callable[..., Session], deployment: Deployment, kube: KubeApiDouble
) -> None:
    _, ui = with_clipboard(open_session, deployment.encryptor.url)
    keys = ui.page.keyboard
    order = []
    for _ in range(6):
        keys.press("Tab")
        order.append(ui.focused())
        assert ui.focus_is_visible(), ui.focused()
        if order[-1] == "namespace":
            keys.type("team-keys")
        elif order[-1] == "service-account":
            keys.type("app")
        elif order[-1] == "value":
            keys.type("typed-s3cr3t-value")
    assert order == ["skip", "namespace", "service-account", "source-text", "value", "submit"]
    keys.press("Enter")
    ui.wait_for_answer()
    assert ui.error() is None, ui.error()
    first = ui.el("ciphertext").text_content()

    # Enter in a field submits; Ctrl+Enter in the text does.
    for submit_key in ("Enter", "Control+Enter"):
        ui.label("Secret text").focus()
        keys.type(f"again-{submit_key}")
        if submit_key == "Enter":
            ui.label("Service account").focus()
        keys.press(submit_key)
        ui.wait_for_answer()
        assert ui.error() is None, ui.error()
    token = kube.issue_token("team-keys", "app")
    assert deployment.decrypt(first, token).text == "typed-s3cr3t-value"
    assert deployment.decrypt(ui.el("ciphertext").text_content(), token).text == (
        "again-Control+Enter"
    )

    # From the button on: the output's form (arrow keys), then its names, then the copy button.
    ui.el("submit").focus()
    keys.press("Tab")
    assert ui.focused() == "format-raw"
    keys.press("ArrowRight")
    assert ui.focused() == "format-kamussecret"
    for expected in ("object-name", "key-name", "copy"):
        keys.press("Tab")
        assert ui.focused() == expected
        assert ui.focus_is_visible(), expected
    keys.press("Enter")
    expect(ui.el("copied")).to_have_text("Copied")
    assert yaml.safe_load(ui.page.evaluate("navigator.clipboard.readText()"))["kind"] == (
        "KamusSecret"
    )

    for label in ("Namespace", "Service account", "Text", "File", "Secret text",
                  "Ciphertext", "KamusSecret", "ConfigMap", "Name", "Key"):  # fmt: skip
        assert ui.label(label).count() == 1, label
    ui.label("File").check()
    assert ui.label("Secret file").count() == 1
    unlabelled = ui.page.evaluate(
        """() => [...document.querySelectorAll("input, textarea, select")]
            .filter((e) => e.labels.length === 0 && !e.getAttribute("aria-label"))
            .map((e) => e.id || e.outerHTML)"""
    )
    assert unlabelled == []
    # One h1, then h2s for the three cards.
    headings = ui.page.evaluate(
        "[...document.querySelectorAll('h1, h2')].map((h) => h.tagName + ' ' + h.textContent)"
    )
    assert headings == [
        "H1 Encrypt a secret",
        "H2 Encrypt",
        "H2 Result",
        "H2 Sealing keys",
    ]
    assert ui.el("status").get_attribute("aria-live") == "polite"
    assert ui.el("error").get_attribute("role") == "alert"


def test_the_copy_button_puts_exactly_the_shown_output_on_the_clipboard(
    open_session: Callable[..., Session], deployment: Deployment
) -> None:
    origin = deployment.encryptor.url
    _, ui = with_clipboard(open_session, origin)
    ui.encrypt("team-copy", "app", MULTILINE)
    for form in ("Ciphertext", "KamusSecret", "ConfigMap"):
        shown = ui.output(form)
        ui.page.evaluate("navigator.clipboard.writeText('')")
        ui.el("copy").click()
        expect(ui.el("copied")).to_have_text("Copied")
        assert ui.page.evaluate("navigator.clipboard.readText()") == shown, form

    # Over plain http from another name there is no navigator.clipboard (not a secure
    # context): the page selects the output and copies it with execCommand.
    port = httpx.URL(origin).port
    remote = EncryptPage(open_session().page).open(f"http://{OTHER_HOST}:{port}")
    assert remote.page.evaluate("window.isSecureContext") is False
    remote.encrypt("team-copy", "app", TEXT)
    shown = remote.output("KamusSecret")
    remote.el("copy").click()
    expect(remote.el("copied")).to_have_text("Copied")
    assert ui.page.evaluate("navigator.clipboard.readText()") == shown


# -- the screenshots in docs/ui.md -----------------------------------------------------------


def write_if_changed(path: Path, png: bytes) -> None:
    """Rewritten only when its pixels changed, so that a re-run leaves the git tree clean."""
    if path.exists() and path.read_bytes() == png:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(png)


def test_screenshots_at_desktop_and_phone_widths(
    open_session: Callable[..., Session], tmp_path: Path
) -> None:
    """docs/images/ui-desktop.png: the result of a real encryption, its ciphertext masked (it is
    random); docs/images/ui-phone.png: the filled form, before it is sent."""
    env = {
        "KeyManagement__AES__Key": SCREENSHOT_KEY,
        "KeyManagement__Sealing__RenewPeriodDays": "0",
        "KeyManagement__Sealing__Cluster": "prod-eu",
    }
    with kamus_serve("encryptor", env, tmp_path / "encryptor.log") as encryptor:
        desktop = EncryptPage(
            open_session(viewport={"width": 1280, "height": 900}, color_scheme="light").page
        ).open(encryptor.url)
        desktop.fill("team-a", "billing-api", "postgres://billing:example@db:5432/billing")
        desktop.submit()
        assert desktop.error() is None, desktop.error()
        desktop.label("KamusSecret").check()
        desktop.label("Name").fill("billing-db")
        desktop.label("Key").fill("DATABASE_URL")
        desktop.page.evaluate(REDACT)
        desktop.page.evaluate(NO_GRIP)
        desktop.page.evaluate("document.activeElement.blur()")
        desktop.page.mouse.move(0, 0)
        write_if_changed(
            IMAGES / "ui-desktop.png",
            desktop.page.screenshot(full_page=True, animations="disabled"),
        )

        phone = EncryptPage(
            open_session(viewport={"width": 390, "height": 844}, color_scheme="light").page
        ).open(encryptor.url)
        phone.fill("team-a", "billing-api", "postgres://billing:example@db:5432/billing")
        phone.page.evaluate(NO_GRIP)
        phone.page.evaluate("document.activeElement.blur()")
        phone.page.mouse.move(0, 0)
        write_if_changed(IMAGES / "ui-phone.png", phone.page.screenshot(animations="disabled"))
    assert (IMAGES / "ui-desktop.png").stat().st_size > 10_000
    assert (IMAGES / "ui-phone.png").stat().st_size > 10_000
