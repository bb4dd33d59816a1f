"""Measurement 10 (issue 22): what each more recipient of an m1 value costs.

For 1, 2 and 5 clusters (each its own AES master and signed bundle), in this process:

* the size of a value of a 32-byte secret, in characters;
* sealing it (one data key, an HPKE wrap per recipient);
* opening it in the decryptor of the *last* cluster, with the data-key cache off: the stanza is
  found by its key id, so the open costs one X25519 agreement whatever the number of stanzas.
  ``unwraps_per_open`` counts them.

And for reference: one cluster plus a break-glass age stanza, and a 2-of-3 threshold of age keys
(sizes, and ``kamus recover``'s in-process cost of the threshold).

``python -m bench.recipients [--quick]`` prints the table; ``python -m bench`` includes it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

from pyrage import x25519

from bench.sealing import per_call_us
from crypto import AESKeyManager, bundle, m1
from crypto.recipients import AgeIdentities, AgeRecipient, Recipient, open_offline, wrap_for
from crypto.sealing import Schedule, SealingPrivateKey

SA_ID = "team-a:app"
SECRET = b"s3cr3t-" + b"x" * 25  # 32 bytes
COUNTS = (1, 2, 5)


def _sealer(loop: asyncio.AbstractEventLoop) -> Callable[..., str]:
    """Sealing as ``kamus seal --offline`` does it: one data key, a wrap per recipient."""

    def seal(groups: Sequence[Sequence[Recipient]], threshold: int = 1) -> str:
        data_key = m1.new_data_key()
        stanzas = loop.run_until_complete(wrap_for(data_key, groups, SA_ID, threshold))
        return m1.seal(data_key, stanzas, [SECRET], SA_ID, threshold=threshold)[0]

    return seal


def measure(quick: bool = False) -> dict[str, Any]:
    n = 30 if quick else 1000
    now = datetime.now(UTC)
    masters = [os.urandom(32) for _ in range(max(COUNTS))]
    bundles = [bundle.load(bundle.from_masters([m], now=now, schedule=Schedule())) for m in masters]
    unwraps = 0
    real_unwrap = SealingPrivateKey.unwrap

    def counted(self: SealingPrivateKey, stanza: m1.Stanza, sa_id: str) -> bytes:
        nonlocal unwraps
        unwraps += 1
        return real_unwrap(self, stanza, sa_id)

    by_count: dict[str, Any] = {}
    loop = asyncio.new_event_loop()
    seal = _sealer(loop)
    SealingPrivateKey.unwrap = counted  # type: ignore[method-assign]
    try:
        for count in COUNTS:
            groups: list[list[Recipient]] = [[b.recipient(now)] for b in bundles[:count]]
            value = seal(groups)
            last = AESKeyManager(masters[count - 1])  # holds the last stanza's key only

            def open_once(value: str = value, last: AESKeyManager = last) -> bytes:
                return loop.run_until_complete(last.decrypt(value, SA_ID))

            def seal_once(groups: list[list[Recipient]] = groups) -> str:
                return seal(groups)

            unwraps = 0
            assert open_once() == SECRET
            per_open = unwraps
            by_count[str(count)] = {
                "size": len(value),
                "seal_us": per_call_us(seal_once, n // count),
                "open_us": per_call_us(open_once, n),
                "unwraps_per_open": per_open,
            }
        identities = [x25519.Identity.generate() for _ in range(3)]
        ages = [AgeRecipient(str(i.to_public())) for i in identities]
        with_age = seal([[bundles[0].recipient(now)], [ages[0]]])
        threshold = seal([[a] for a in ages], threshold=2)
    finally:
        SealingPrivateKey.unwrap = real_unwrap  # type: ignore[method-assign]
        loop.close()
    holder = AgeIdentities("\n".join(str(i) for i in identities[:2]), "bench")
    parsed = m1.parse(threshold)
    return {
        "recipients": by_count,
        "one_cluster_plus_age": {"size": len(with_age)},
        "threshold_2_of_3_age": {
            "size": len(threshold),
            "recover_us": per_call_us(lambda: open_offline(parsed, holder), max(5, n // 20)),
        },
        "secret_bytes": len(SECRET),
    }


def rows(results: dict[str, Any]) -> list[tuple[str, str]]:
    by = results["recipients"]
    one = by["1"]
    out = [
        (
            f"recipients (clusters): {', '.join(by)}",
            "value size; seal; open in the last cluster (X25519 unwraps per open)",
        )
    ]
    for count, row in by.items():
        out.append(
            (
                f"  {count}",
                f"{row['size']} chars ({row['size'] / one['size']:.2f}x); "
                f"{row['seal_us']:.0f} µs; {row['open_us']:.0f} µs "
                f"({row['open_us'] / one['open_us']:.2f}x, {row['unwraps_per_open']} unwrap)",
            )
        )
    out.append(
        ("  1 cluster + age break-glass", f"{results['one_cluster_plus_age']['size']} chars")
    )
    t = results["threshold_2_of_3_age"]
    out.append(("  2-of-3 age threshold", f"{t['size']} chars; recover {t['recover_us']:.0f} µs"))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny counts: the smoke run")
    parser.add_argument("--json", action="store_true", help="print the results as JSON too")
    args = parser.parse_args()
    results = measure(args.quick)
    print(f"a {results['secret_bytes']}-byte secret sealed for N recipients (one run)")
    for name, text in rows(results):
        print(f"{name:<32} {text}")
    if args.json:
        print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
