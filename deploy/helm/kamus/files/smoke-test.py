"""`helm test`: encrypt a random value for this pod's own service account, decrypt it back with
the pod's projected token, and check that a value for another service account is refused.
Standard library only; run with the decryptor image's python. Exit 0 on success."""

import json
import os
import ssl
import sys
import urllib.error
import urllib.request


def post(url: str, body: dict[str, str], token: str | None = None) -> tuple[int, str]:
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    if not url.startswith(("http://", "https://")):
        raise SystemExit(f"FAIL: not an http(s) URL: {url}")
    request = urllib.request.Request(url, json.dumps(body).encode(), headers, method="POST")  # noqa: S310
    ca_file = os.environ.get("CA_FILE")
    context = ssl.create_default_context(cafile=ca_file) if ca_file else None
    try:
        with urllib.request.urlopen(request, timeout=30, context=context) as reply:  # noqa: S310
            return reply.status, reply.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def main() -> int:
    encryptor, decryptor = os.environ["ENCRYPTOR_URL"], os.environ["DECRYPTOR_URL"]
    namespace, account = os.environ["POD_NAMESPACE"], os.environ["SERVICE_ACCOUNT"]
    with open(os.environ["TOKEN_FILE"], encoding="utf-8") as file:
        token = file.read().strip()
    secret = os.urandom(16).hex()

    def encrypt(service_account: str) -> str:
        body = {"data": secret, "service-account": service_account, "namespace": namespace}
        status, text = post(f"{encryptor}/api/v1/encrypt", body)
        if status != 200:
            raise SystemExit(f"FAIL encrypt for {namespace}:{service_account}: {status} {text}")
        return text

    status, text = post(f"{decryptor}/api/v1/decrypt", {"data": encrypt(account)}, token)
    if status != 200 or text != secret:
        print(f"FAIL decrypt as {namespace}:{account}: {status} {text[:200]}")
        return 1
    print(f"ok: encrypted and decrypted as {namespace}:{account}")
    other = f"{account}-other"
    status, text = post(f"{decryptor}/api/v1/decrypt", {"data": encrypt(other)}, token)
    if status == 200:
        print(f"FAIL: {namespace}:{account} could decrypt a value for {namespace}:{other}")
        return 1
    print(f"ok: a value for {namespace}:{other} is refused ({status})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
