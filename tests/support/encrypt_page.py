"""The encryptor's encrypt page (encryptor/ui, docs/ui.md) driven in a real Chromium: what
tests/e2e/test_ui_browser.py does to it, by its labels and ``data-test`` attributes.

Import it only where playwright is installed (the tests skip before, when it is not)."""

import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from playwright.sync_api import Browser, BrowserContext, ConsoleMessage, Page, Playwright, Request

# Debian's chromium: Playwright's own browser download is not used (nor reachable here).
CHROMIUM = shutil.which("chromium")
# A name that is not loopback, for the page served over plain http from "another host".
OTHER_HOST = "kamus.test"


def launch(playwright: Playwright) -> Browser:
    assert CHROMIUM is not None
    return playwright.chromium.launch(
        executable_path=CHROMIUM,
        # Partial raster repaints only what changed, and left a pixel of a rounded corner a shade
        # apart from one run to the next: off, the screenshots are the same on every run.
        args=[
            "--no-sandbox",
            "--disable-partial-raster",
            f"--host-resolver-rules=MAP {OTHER_HOST} 127.0.0.1",
        ],
    )


@dataclass
class Session:
    """One browser context: its page, and everything it asked for or complained about."""

    context: BrowserContext
    page: Page
    requests: list[Request] = field(default_factory=list)
    console: list[str] = field(default_factory=list)
    page_errors: list[str] = field(default_factory=list)
    csp_expected: bool = False  # a test that provokes violations on purpose

    def csp_reports(self) -> list[str]:
        # Chromium reports each violation as a console error naming the policy.
        return [m for m in self.console if "Content Security Policy" in m]


@contextmanager
def session(browser: Browser, **context_options: Any) -> Iterator[Session]:
    context = browser.new_context(**context_options)
    page = context.new_page()
    recorded = Session(context, page)
    context.on("request", lambda request: recorded.requests.append(request))

    def on_console(message: ConsoleMessage) -> None:
        recorded.console.append(f"{message.type}: {message.text}")

    page.on("console", on_console)
    page.on("pageerror", lambda error: recorded.page_errors.append(str(error)))
    try:
        yield recorded
    finally:
        context.close()


class EncryptPage:
    """The page, as a user sees it."""

    def __init__(self, page: Page) -> None:
        self.page = page

    def open(self, base_url: str) -> "EncryptPage":
        self.page.goto(f"{base_url}/ui")
        # Its settings (ui/info.json) are in once the sealing card says one thing or the other.
        self.page.locator(
            "[data-test=sealing-anchor]:not(:empty), [data-test=sealing-absent]:not([hidden])"
        ).first.wait_for()
        return self

    def el(self, name: str) -> Any:
        return self.page.locator(f"[data-test={name}]")

    def label(self, text: str) -> Any:
        return self.page.get_by_label(text, exact=True)

    def fill(self, namespace: str, service_account: str, value: str | bytes) -> None:
        self.label("Namespace").fill(namespace)
        self.label("Service account").fill(service_account)
        if isinstance(value, bytes):
            self.label("File").check()
            self.label("Secret file").set_input_files(
                files=[
                    {"name": "blob.bin", "mimeType": "application/octet-stream", "buffer": value}
                ]
            )
        else:
            self.label("Text").check()
            self.label("Secret text").fill(value)

    def submit(self) -> None:
        self.el("submit").click()
        self.wait_for_answer()

    def wait_for_answer(self) -> None:
        """Until the result or an error shows (submitting clears both at once)."""
        self.page.locator(
            "[data-test=status]:not(:empty), [data-test=error]:not([hidden])"
        ).first.wait_for()

    def error(self) -> str | None:
        if self.el("error").is_hidden():
            return None
        text: str = self.el("error-message").text_content()
        return text

    def encrypt(self, namespace: str, service_account: str, value: str | bytes) -> str:
        """The raw ciphertext the page shows for ``value``."""
        self.fill(namespace, service_account, value)
        self.submit()
        assert self.error() is None, self.error()
        return self.output("Ciphertext")

    def output(self, form: str) -> str:
        """The output shown as ``form`` (Ciphertext, KamusSecret, ConfigMap), as copied."""
        self.label(form).check()
        text: str = self.el("output").text_content()
        return text

    def focused(self) -> str:
        """The focused element: its id, or its data-test name."""
        found: str = self.page.evaluate(
            "(() => { const e = document.activeElement;"
            " return e ? (e.id || e.dataset.test || e.tagName) : ''; })()"
        )
        return found

    def focus_is_visible(self) -> bool:
        """Whether the focused control draws a focus ring (a radio draws it on its label)."""
        shown: bool = self.page.evaluate(
            "(() => { const e = document.activeElement;"
            " const drawn = e.type === 'radio' ? e.nextElementSibling : e;"
            " return getComputedStyle(drawn).outlineStyle !== 'none'"
            " && parseFloat(getComputedStyle(drawn).outlineWidth) >= 2; })()"
        )
        return shown

    def stored(self) -> dict[str, Any]:
        """Everything the page could have kept in the browser."""
        found: dict[str, Any] = self.page.evaluate(
            """async () => ({
                localStorage: localStorage.length,
                sessionStorage: sessionStorage.length,
                cookie: document.cookie,
                indexedDB: (await indexedDB.databases()).length,
                caches: (await caches.keys()).length,
            })"""
        )
        return found
