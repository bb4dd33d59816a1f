"""``kamus init``'s identity pre-check: its own copy of the identity tag (crypto is too slow to
import at every pod start) must agree with the format's, and it reads a token's claims."""

import base64
import json
import os
from datetime import UTC, datetime

from hypothesis import given
from hypothesis import strategies as st

from crypto import bundle, m1
from crypto.sealing import Schedule
from kamus.cli.init import identity_tag, sealed_tag, token_identity

NAME = st.from_regex(r"[a-z0-9]([-a-z0-9]{0,20}[a-z0-9])?", fullmatch=True)


@given(NAME, NAME)
def test_the_tag_is_the_formats(namespace: str, service_account: str) -> None:
    sa_id = f"{namespace}:{service_account}"
    assert identity_tag(sa_id) == m1.identity_tag(sa_id)


def test_the_tag_of_a_sealed_value_is_read_and_others_have_none() -> None:
    now = datetime.now(UTC)
    keys = bundle.load(bundle.from_masters([os.urandom(32)], now=now, schedule=Schedule()))
    [value] = keys.seal([b"x"], "team-a:app", now)
    assert sealed_tag(value) == m1.identity_tag("team-a:app")
    for other in ("kamus$a1$abc$def", "kamus$m1$!!!$x$y", "env$a$b:c", ""):
        assert sealed_tag(other) is None


def jwt(claims: dict[str, object]) -> str:
    body = base64.urlsafe_b64encode(json.dumps(claims).encode()).decode().rstrip("=")
    return f"eyJhbGciOiJSUzI1NiJ9.{body}.c2ln"


def test_a_tokens_identity_comes_from_its_subject() -> None:
    assert token_identity(jwt({"sub": "system:serviceaccount:team-a:app"})) == "team-a:app"
    for token in (
        jwt({"sub": "jane@example.com"}),
        jwt({"sub": "system:serviceaccount:team-a"}),
        jwt({"sub": "system:serviceaccount:team-a:app:extra"}),
        jwt({}),
        "opaque-token",
        "a.!!!.c",
    ):
        assert token_identity(token) is None
