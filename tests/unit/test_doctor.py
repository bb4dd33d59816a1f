"""``kamus doctor``'s verdicts on what the apiserver answered (kamus/cli/doctor.py); the whole
command runs against the double and a real injector in tests/e2e/test_injector_tls.py."""

import json

import pytest

from kamus.cli.doctor import check_encrypt, describe_injection, describe_refusal, probe_pod


def status(message: str, code: int) -> str:
    return json.dumps({"kind": "Status", "message": message, "code": code})


def test_a_pod_that_came_back_unchanged_means_the_webhook_was_not_called() -> None:
    check = describe_injection(probe_pod("web"))
    assert check.verdict == "FAIL"
    assert check.detail.startswith("the webhook was not called")
    assert "kubectl get mutatingwebhookconfigurations" in check.detail


@pytest.mark.parametrize(
    ("code", "message", "verdict", "says"),
    [
        (
            500,
            'Internal error occurred: failed calling webhook "inject.kamus.soluto.com": failed '
            'to call webhook: Post "https://kamus-injector.kamus.svc:443/mutate?timeout=5s": '
            "context deadline exceeded",
            "FAIL",
            "set injector.port to 10250",
        ),
        (
            400,
            'admission webhook "inject.kamus.soluto.com" denied the request: the pod runs as the '
            "default service account",
            "FAIL",
            "the webhook was reached and refused the pod: admission webhook",
        ),
        (
            403,
            "pods \"kamus-doctor-x\" is forbidden: ValidatingAdmissionPolicy 'kamus-injected' "
            "with binding 'kamus-injected' denied request: the kamus injector did not inject",
            "FAIL",
            "the policy refused it (failing closed)",
        ),
        (
            403,
            'pods is forbidden: User "dev" cannot create resource "pods" in the namespace "a"',
            "SKIP",
            "you may not create pods here",
        ),
        (404, 'namespaces "nope" not found', "FAIL", "the dry-run create failed (404)"),
    ],
)
def test_each_refusal_is_named_with_what_to_do(
    code: int, message: str, verdict: str, says: str
) -> None:
    check = describe_refusal(code, status(message, code))
    assert check.verdict == verdict
    assert says in check.detail
    assert message in check.detail


def test_without_an_encryptor_url_the_rbac_answer_decides() -> None:
    allowed = (True, "RBAC: you may create kamussecrets.soluto.com in a")
    denied = (False, "RBAC: you may not create kamussecrets.soluto.com in a")
    assert check_encrypt(None, "a", "web", None, allowed, verify=True).verdict == "PASS"
    assert check_encrypt(None, "a", "web", None, denied, verify=True).verdict == "WARN"
    assert check_encrypt(None, "a", "web", None, None, verify=True).verdict == "SKIP"
