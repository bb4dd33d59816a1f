"""/docs works offline: every service serves Swagger UI from its own origin, under a strict CSP,
and the page asks nothing of another origin."""

import importlib.util
import re
import shutil
from collections.abc import Callable, Iterator
from html.parser import HTMLParser
from typing import Any
from urllib.parse import urljoin, urlsplit

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from controller.app import create_app as create_controller
from decryptor.app import create_app as create_decryptor
from encryptor.app import create_app as create_encryptor
from kamus.server.settings import Settings
from tests.support.servers import ThreadedServer
from tests.support.settings import SettingsFactory

ORIGIN = "http://testserver"
DOCS = ORIGIN + "/docs"
SERVICES: dict[str, tuple[Callable[[Settings], FastAPI], str]] = {
    # service -> (app factory, a path its operations list must show)
    "encryptor": (create_encryptor, "/api/v1/encrypt"),
    "decryptor": (create_decryptor, "/api/v1/decrypt"),
    "controller": (create_controller, "/healthz"),
}
EXPECTED_CSP = {
    "default-src": ["'none'"],
    "script-src": ["'self'"],
    "style-src": ["'self'"],
    "img-src": ["'self'", "data:"],
    "connect-src": ["'self'"],
    "frame-ancestors": ["'none'"],
    "base-uri": ["'none'"],
    "form-action": ["'self'"],
}
URL_ATTRIBUTES = {"src", "href", "srcset", "action", "formaction", "poster", "data", "manifest"}
CSS_URL = re.compile(r"""url\(\s*['"]?([^'")]*)""")


class Page(HTMLParser):
    """What a page references and what it would run inline."""

    def __init__(self) -> None:
        super().__init__()
        self.references: list[tuple[str, dict[str, str], str]] = []  # (tag, attributes, url)
        self.inline: list[str] = []  # inline script or style, and event handler attributes
        self._in: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = {name: value or "" for name, value in attrs}
        for name, value in attributes.items():
            if name in URL_ATTRIBUTES:
                self.references.append((tag, attributes, value))
            if name.startswith("on") or name == "style":
                self.inline.append(f"<{tag} {name}={value!r}>")
        self._in = tag if tag in ("script", "style") else None

    def handle_endtag(self, tag: str) -> None:
        self._in = None

    def handle_data(self, data: str) -> None:
        if self._in is not None and data.strip():
            self.inline.append(f"<{self._in}>{data.strip()[:80]}")


def same_origin(reference: str, base: str = DOCS) -> str:
    """The absolute URL of a relative or path-absolute reference; fails for any other."""
    parts = urlsplit(reference)
    assert not parts.scheme, reference
    assert not parts.netloc, reference
    # A browser reads a backslash as a slash: "/\\host" would be another origin.
    assert "\\" not in reference, reference
    resolved = urljoin(base, reference)
    assert resolved.startswith(ORIGIN + "/"), resolved
    return resolved


def parse_csp(header: str) -> dict[str, list[str]]:
    directives = [part.split() for part in header.split(";") if part.strip()]
    return {tokens[0].lower(): tokens[1:] for tokens in directives}


@pytest.fixture(params=list(SERVICES))
def service(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    return name


@pytest.fixture
def app(service: str, make_settings: SettingsFactory) -> FastAPI:
    return SERVICES[service][0](make_settings())


@pytest.fixture
def client(app: FastAPI) -> Iterator[TestClient]:
    # Not entered: /docs needs none of what the lifespan starts (Kubernetes, the controller).
    client = TestClient(app)
    yield client
    client.close()


def test_docs_page_references_only_its_own_origin(client: TestClient) -> None:
    response = client.get("/docs")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    page = Page()
    page.feed(response.text)
    page.close()
    assert page.inline == []
    assert CSS_URL.findall(response.text) == []
    kinds = {}
    for tag, attributes, reference in page.references:
        url = same_origin(reference)
        if tag == "script":
            kinds[url] = "text/javascript"
        elif tag == "link" and attributes.get("rel") == "stylesheet":
            kinds[url] = "text/css"
        elif tag == "link" and "icon" in attributes.get("rel", ""):
            kinds[url] = "image/png"
    assert sorted(kinds.values()) == ["image/png", "text/css", "text/javascript", "text/javascript"]
    for url, media_type in kinds.items():
        asset = client.get(url)
        assert asset.status_code == 200, url
        assert asset.headers["content-type"].split(";")[0] == media_type, url
        assert asset.content, url
        assert asset.headers["x-content-type-options"] == "nosniff", url
        if media_type == "text/css":
            references = CSS_URL.findall(asset.text)
            assert references, "swagger-ui.css draws its icons with url(data:...)"
            for reference in references:
                if not reference.startswith("data:"):
                    same_origin(reference, url)


def test_swagger_ui_is_the_bundle_and_starts_from_a_file(client: TestClient) -> None:
    page = Page()
    page.feed(client.get("/docs").text)
    scripts = [urljoin(DOCS, src) for tag, _, src in page.references if tag == "script"]
    assert len(scripts) == 2
    bundle, init = (client.get(url).text for url in scripts)
    assert "SwaggerUIBundle" in bundle
    assert len(bundle) > 500_000  # the whole UI, not a loader that fetches it
    assert "SwaggerUIBundle(" in init
    # Swagger UI's default validator badge is an image from validator.swagger.io.
    assert re.search(r"validatorUrl:\s*null", init)
    spec_url = re.search(r"""\burl:\s*["']([^"']+)["']""", init)
    assert spec_url, init
    assert same_origin(spec_url.group(1)) == ORIGIN + "/openapi.json"
    spec = client.get("/openapi.json")
    assert spec.status_code == 200
    assert spec.json()["openapi"].startswith("3.")
    assert not any(path.startswith(("/docs", "/redoc")) for path in spec.json()["paths"])


def test_docs_page_and_assets_carry_a_strict_csp(client: TestClient) -> None:
    page = Page()
    page.feed(client.get("/docs").text)
    urls = [DOCS] + [urljoin(DOCS, ref) for _, _, ref in page.references]
    for url in urls:
        response = client.get(url)
        policy = parse_csp(response.headers["content-security-policy"])
        assert policy == EXPECTED_CSP, url
        assert "'unsafe-inline'" not in policy["script-src"]
        assert response.headers["x-content-type-options"] == "nosniff"


def test_only_the_self_hosted_docs_are_served(client: TestClient) -> None:
    # ReDoc and the OAuth2 redirect page would load from a CDN or run an inline script.
    for path in (
        "/redoc",
        "/docs/oauth2-redirect",
        "/docs/redoc.standalone.js",
        "/docs/..%2fweb.py",
    ):
        assert client.get(path).status_code == 404, path


def test_docs_render_in_a_browser_with_nothing_from_another_origin(
    service: str, app: FastAPI
) -> None:
    chromium = shutil.which("chromium")
    if chromium is None or importlib.util.find_spec("playwright") is None:
        pytest.skip(
            "a real browser check needs Debian's chromium and the playwright package "
            f"(chromium: {chromium or 'missing'}); the other tests here check the page's HTML"
        )
    sync_api: Any = pytest.importorskip("playwright.sync_api")
    server = ThreadedServer(app)
    server.start()
    origin = f"http://127.0.0.1:{server.port}"
    elsewhere: list[str] = []
    console: list[str] = []

    def only_loopback(route: Any) -> None:
        url = route.request.url
        if url.startswith(origin + "/"):
            route.continue_()
        else:
            elsewhere.append(url)
            route.abort()

    try:
        with sync_api.sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
            try:
                page = browser.new_page()
                page.on("console", lambda m: console.append(f"{m.type}: {m.text}"))
                page.on("pageerror", lambda e: console.append(f"pageerror: {e}"))
                page.route("**/*", only_loopback)
                page.goto(origin + "/docs")
                expected = SERVICES[service][1]
                page.wait_for_selector(
                    f".opblock-summary-path:has-text('{expected}')", timeout=20_000
                )
                # "Try it out" on /healthz: a request the CSP's connect-src must allow.
                health = page.locator(".opblock", has_text="/healthz").first
                health.locator(".opblock-summary-control").click()
                health.locator("button.try-out__btn").click()
                health.locator("button.execute").click()
                health.locator(".live-responses-table").wait_for(timeout=10_000)
            finally:
                browser.close()
    finally:
        server.stop()
    assert elsewhere == []
    # Chromium reports each CSP violation as a console error ("Refused to ... because it violates
    # the following Content Security Policy directive"); the controller's /healthz, not started
    # here, answers 503, which Chromium logs too.
    refused = [m for m in console if "Content Security Policy" in m or "Refused to" in m]
    assert refused == []
    assert not [m for m in console if m.startswith("pageerror")]
