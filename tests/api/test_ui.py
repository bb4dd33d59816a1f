"""``GET /ui``, the encrypt page (encryptor/page.py, docs/ui.md), without a browser: the files it
serves and nothing else, their headers, ``info.json``, and what the page's own files may and may
not contain. tests/e2e/test_ui_browser.py drives it in Chromium."""

import base64
import re
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import urljoin, urlsplit

import pytest
from fastapi.testclient import TestClient

from crypto import AESKeyManager, bundle
from encryptor.app import create_app
from kamus.server.identity import (
    DEFAULT_SERVICE_ACCOUNT_REFUSAL,
    check_namespace,
    check_service_account,
)
from kamus.server.sealing import export_bundle
from tests.support.settings import SettingsFactory

ORIGIN = "http://testserver"
PAGE = ORIGIN + "/ui"
UI_FILES = Path(__file__).resolve().parents[2] / "encryptor" / "ui"
SERVED = {
    "/ui": "text/html",
    "/ui/ui.js": "text/javascript",
    "/ui/ui.css": "text/css",
    "/ui/favicon.svg": "image/svg+xml",
    "/ui/info.json": "application/json",
}
EXPECTED_CSP = {
    "default-src": ["'none'"],
    "script-src": ["'self'"],
    "style-src": ["'self'"],
    "img-src": ["'self'"],
    "connect-src": ["'self'"],
    "frame-ancestors": ["'none'"],
    "base-uri": ["'none'"],
    "form-action": ["'none'"],
}
URL_ATTRIBUTES = {"src", "href", "srcset", "action", "formaction", "poster", "data", "manifest"}


def parse_csp(header: str) -> dict[str, list[str]]:
    directives = [part.split() for part in header.split(";") if part.strip()]
    return {tokens[0].lower(): tokens[1:] for tokens in directives}


class Page(HTMLParser):
    """What the HTML references, what it would run or style inline, and its form controls."""

    def __init__(self) -> None:
        super().__init__()
        self.references: list[tuple[str, dict[str, str], str]] = []
        self.inline: list[str] = []
        self.controls: list[dict[str, str]] = []
        self.forms: list[dict[str, str]] = []
        self._in: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = {name: value or "" for name, value in attrs}
        for name, value in attributes.items():
            if name in URL_ATTRIBUTES:
                self.references.append((tag, attributes, value))
            if name.startswith("on") or name == "style":
                self.inline.append(f"<{tag} {name}={value!r}>")
        if tag == "style":
            self.inline.append("<style>")
        if tag in ("input", "textarea", "select"):
            self.controls.append(attributes)
        if tag == "form":
            self.forms.append(attributes)
        self._in = tag if tag == "script" else None

    def handle_endtag(self, tag: str) -> None:
        self._in = None

    def handle_data(self, data: str) -> None:
        if self._in == "script" and data.strip():
            self.inline.append(f"<script>{data.strip()[:80]}")


@pytest.fixture
def client(make_settings: SettingsFactory) -> Iterator[TestClient]:
    client = TestClient(create_app(make_settings()))
    yield client
    client.close()


def parsed_page(client: TestClient) -> Page:
    page = Page()
    page.feed(client.get("/ui").text)
    page.close()
    return page


# -- what is served, and how -----------------------------------------------------------------


def test_every_file_of_the_page_carries_the_strict_headers(client: TestClient) -> None:
    for path, media_type in SERVED.items():
        response = client.get(path)
        assert response.status_code == 200, path
        assert response.headers["content-type"].split(";")[0] == media_type, path
        assert response.content, path
        assert parse_csp(response.headers["content-security-policy"]) == EXPECTED_CSP, path
        assert response.headers["x-frame-options"] == "DENY", path
        assert response.headers["x-content-type-options"] == "nosniff", path
        assert response.headers["cache-control"] == "no-store", path
        assert response.headers["referrer-policy"] == "no-referrer", path
        assert "set-cookie" not in response.headers, path


def test_the_files_are_the_pages_own(client: TestClient) -> None:
    for path, name in [
        ("/ui", "index.html"),
        ("/ui/ui.js", "ui.js"),
        ("/ui/ui.css", "ui.css"),
        ("/ui/favicon.svg", "favicon.svg"),
    ]:
        assert client.get(path).content == (UI_FILES / name).read_bytes(), path


@pytest.mark.parametrize(
    "path",
    [
        "/ui/..%2fapp.py",
        "/ui/%2e%2e/app.py",
        "/ui/..%2f..%2fpyproject.toml",
        "/ui/index.html",
        "/ui/index.html?file_name=../app.py",
        "/ui/page.py",
        "/ui/ui",
        "/ui/ui.js.map",
        "/UI",
        "/ui/.%2fui.js",
    ],
)
def test_nothing_else_is_served_under_ui(client: TestClient, path: str) -> None:
    response = client.get(path, follow_redirects=False)
    assert response.status_code == 404, (path, response.status_code)


def test_a_trailing_slash_leads_back_to_the_page_under_any_path_prefix(
    client: TestClient,
) -> None:
    """Relative, so that behind an ingress serving the encryptor under a prefix the browser
    stays under it (the router's own redirect would name the host's root)."""
    response = client.get("/ui/", follow_redirects=False)
    assert response.status_code == 308
    location = response.headers["location"]
    assert location == "../ui"
    assert urljoin("https://kamus.example/team-tools/ui/", location) == (
        "https://kamus.example/team-tools/ui"
    )
    assert parse_csp(response.headers["content-security-policy"]) == EXPECTED_CSP
    assert client.get("/ui/").content == (UI_FILES / "index.html").read_bytes()


def test_a_query_string_never_picks_another_file(client: TestClient) -> None:
    for path, name in [
        ("/ui?file_name=../app.py", "index.html"),
        ("/ui/ui.js?file_name=../app.py&path=page.py", "ui.js"),
        ("/ui/favicon.svg?name=ui.js", "favicon.svg"),
    ]:
        response = client.get(path)
        assert response.status_code == 200, path
        assert response.content == (UI_FILES / name).read_bytes(), path


def test_ui_false_serves_no_page_and_the_api_still_encrypts(
    make_settings: SettingsFactory,
) -> None:
    with TestClient(create_app(make_settings(Encryptor__Ui="false"))) as client:
        for path in SERVED:
            assert client.get(path).status_code == 404, path
        body = {"data": "x", "service-account": "app", "namespace": "team-a"}
        assert client.post("/api/v1/encrypt", json=body).status_code == 200
        assert not [p for p in client.get("/openapi.json").json()["paths"] if "ui" in p]


# -- info.json -------------------------------------------------------------------------------


def test_info_with_the_sealing_keys_derived_from_the_aes_key(
    make_settings: SettingsFactory, aes_key: str
) -> None:
    settings = make_settings(KeyManagement__Sealing__Cluster="prod-eu")
    with TestClient(create_app(settings)) as client:
        info = client.get("/ui/info.json").json()
        refused = client.post(
            "/api/v1/encrypt", json={"data": "x", "service-account": "default", "namespace": "a"}
        )
    master = base64.b64decode(aes_key)
    anchor = bundle.fingerprint(bundle.anchor_from_master(master).public_key())
    published = bundle.load(export_bundle(settings))
    assert info["authentication"] == "none"
    assert info["sealing"]["anchor"] == anchor
    assert info["sealing"]["cluster"] == "prod-eu"
    assert re.fullmatch(r"x25519:g\d+:[0-9a-f]{16}", info["sealing"]["keyId"])
    assert info["sealing"]["keyId"] in [k.kid for k in published.keys]
    # The page refuses `default` with the API's own words.
    assert info["defaultServiceAccount"] == DEFAULT_SERVICE_ACCOUNT_REFUSAL
    assert refused.json()["detail"] == f"service-account: {info['defaultServiceAccount']}"


def test_info_with_a_mounted_bundle_and_with_a_broken_one(
    make_settings: SettingsFactory, aes_key: str, tmp_path: Path
) -> None:
    keys = tmp_path / "keys.json"
    keys.write_text(export_bundle(make_settings()))
    with TestClient(create_app(make_settings(Encryptor__SealingKeysFile=str(keys)))) as client:
        sealing = client.get("/ui/info.json").json()["sealing"]
    assert sealing["anchor"] == bundle.load(keys.read_text()).anchor
    keys.write_text("{not a bundle")
    with TestClient(create_app(make_settings(Encryptor__SealingKeysFile=str(keys)))) as client:
        info = client.get("/ui/info.json")
    assert info.status_code == 200
    assert info.json()["sealing"] is None


def test_info_without_sealing_keys(make_settings: SettingsFactory, aes_key: str) -> None:
    """An encryptor given its key manager (as the KMS modes are, without a bundle file)."""
    manager = AESKeyManager(base64.b64decode(aes_key))
    with TestClient(create_app(make_settings(), key_manager=manager)) as client:
        info = client.get("/ui/info.json").json()
    assert info == {
        "authentication": "none",
        "sealing": None,
        "defaultServiceAccount": DEFAULT_SERVICE_ACCOUNT_REFUSAL,
        "maxRequestBytes": 1024 * 1024,
    }


def test_info_says_when_callers_must_authenticate(make_settings: SettingsFactory) -> None:
    app = create_app(make_settings(Encryptor__Authentication="kubernetes"))
    client = TestClient(app)  # not entered: info.json needs nothing the lifespan starts
    try:
        response = client.get("/ui/info.json")
    finally:
        client.close()
    assert response.json()["authentication"] == "kubernetes"
    assert parse_csp(response.headers["content-security-policy"]) == EXPECTED_CSP


# -- the page's files ------------------------------------------------------------------------


def test_the_page_references_only_its_own_origin_and_runs_nothing_inline(
    client: TestClient,
) -> None:
    page = parsed_page(client)
    assert page.inline == []
    kinds = {}
    for tag, attributes, reference in page.references:
        if reference.startswith("#"):
            continue  # the skip link: a fragment of the page itself
        parts = urlsplit(reference)
        assert not parts.scheme, reference
        assert not parts.netloc, reference
        assert "\\" not in reference, reference  # a browser reads it as a slash
        url = urljoin(PAGE, reference)
        assert url.startswith(ORIGIN + "/ui/"), url
        kinds[urlsplit(url).path] = tag, attributes.get("rel")
    assert kinds == {
        "/ui/favicon.svg": ("link", "icon"),
        "/ui/ui.css": ("link", "stylesheet"),
        "/ui/ui.js": ("script", None),
    }
    for text_file in ("index.html", "ui.js", "ui.css"):
        text = (UI_FILES / text_file).read_text()
        assert re.findall(r"https?://", text) == [], text_file
    for text_file in ("index.html", "ui.css"):
        text = (UI_FILES / text_file).read_text()
        assert "url(" not in text, text_file
        assert "@import" not in text, text_file
    # The icon's only URL is the SVG namespace, which nothing fetches.
    assert re.findall(r"https?://[^\"' ]*", (UI_FILES / "favicon.svg").read_text()) == [
        "http://www.w3.org/2000/svg"
    ]


def test_the_script_stores_nothing_and_asks_only_two_relative_urls() -> None:
    script = (UI_FILES / "ui.js").read_text()
    for forbidden in (
        "localStorage",
        "sessionStorage",
        "document.cookie",
        "indexedDB",
        "caches.",
        "serviceWorker",
        "innerHTML",
        "outerHTML",
        "insertAdjacentHTML",
        "eval(",
        "new Function",
        "XMLHttpRequest",
        "WebSocket",
        "sendBeacon",
        "window.open",
        ".style",
    ):
        assert forbidden not in script, forbidden
    assert sorted(re.findall(r"fetch\(\s*\"([^\"]+)\"", script)) == [
        "api/v1/encrypt",
        "ui/info.json",
    ]
    assert script.count("fetch(") == 2


def test_every_field_is_labelled_and_autocomplete_is_off(client: TestClient) -> None:
    page = parsed_page(client)
    html = client.get("/ui").text
    assert [form.get("autocomplete") for form in page.forms] == ["off"]
    labelled = set(re.findall(r'<label for="([^"]+)"', html))
    wrapped = set(re.findall(r'<label class="seg"><input type="radio" id="([^"]+)"', html))
    for control in page.controls:
        assert control["id"] in labelled | wrapped, control
        if control.get("type") not in ("radio", "file", "password"):
            assert control.get("autocomplete") == "off", control
    token = next(c for c in page.controls if c["id"] == "token")
    assert token["type"] == "password"
    # Chromium's password manager ignores "off" on a password field; "new-password" keeps it
    # from filling the field in, though it may still offer to save what was typed.
    assert token["autocomplete"] == "new-password"


def _js_string(script: str, name: str) -> str:
    """A constant of ui.js made of string literals joined with +."""
    match = re.search(rf"const {name} =\s*((?:\"[^\"]*\"\s*\+?\s*)+);", script)
    assert match, name
    return "".join(re.findall(r"\"([^\"]*)\"", match.group(1)))


def test_the_script_checks_names_with_the_apis_messages() -> None:
    script = (UI_FILES / "ui.js").read_text()
    for name, check in [
        ("NAMESPACE_MESSAGE", check_namespace),
        ("SERVICE_ACCOUNT_MESSAGE", check_service_account),
    ]:
        with pytest.raises(ValueError, match="must be a Kubernetes") as refused:
            check("Not_A_Name")
        assert _js_string(script, name) == str(refused.value), name
    # The same patterns as kamus/server/identity.py's.
    assert 'const LABEL = "[a-z0-9]([-a-z0-9]*[a-z0-9])?";' in script
    assert "v.length > 63 || !DNS1123_LABEL.test(v)" in script
    assert "v.length > 253 || !DNS1123_SUBDOMAIN.test(v)" in script
