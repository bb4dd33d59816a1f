"""atheris (libFuzzer, coverage-guided) over every target in :mod:`tests.fuzz.targets`.

Those are what crosses no network: ``classify``, the base64 decoders, the e1 envelope, Kamus's
legacy parsers and the AES provider. The cloud providers are not here: they are fuzzed only
through their real SDKs against the KMS doubles, in ``tests/fuzz/test_fuzz.py``.

An input's first byte picks the target, the rest is the string, decoded as UTF-8 with invalid
bytes as lone surrogates (which a JSON body can carry too). ``crypto/`` is instrumented, so the
fuzzer steers by the branches of the parsers themselves. Any exception escaping a target is a
finding: libFuzzer prints it and writes the input to ``<artifact_prefix>crash-<sha1>``.

    python -m tests.fuzz.atheris_parsers --write-seeds DIR       # the seed corpus
    python -m tests.fuzz.atheris_parsers -runs=N [libFuzzer flags] DIR...

With ``KAMUS_FUZZ_COUNTS=<file>`` in the environment, the number of inputs run per target is
written to that file as JSON (every 1000 inputs, and at exit).
"""

import atexit
import importlib
import json
import os
import sys
from collections import Counter
from pathlib import Path

SELECTOR_BYTES = 1
COUNTS_EVERY = 1000


def encode(target_index: int, text: str) -> bytes:
    return bytes([target_index]) + text.encode("utf-8", "surrogateescape")


def decode(data: bytes) -> tuple[int, str]:
    if not data:
        return 0, ""
    return data[0], data[SELECTOR_BYTES:].decode("utf-8", "surrogateescape")


def write_seeds(directory: Path) -> int:
    """One file per (target, seed): every format's valid and near-valid values, for each target."""
    from tests.fuzz import targets

    directory.mkdir(parents=True, exist_ok=True)
    names = [t.name for t in targets.build_targets()]
    written = 0
    for index, name in enumerate(names):
        for number, seed in enumerate(targets.SEEDS):
            (directory / f"{name}-{number:04d}").write_bytes(encode(index, seed))
            written += 1
    return written


def main(argv: list[str]) -> None:
    if len(argv) == 3 and argv[1] == "--write-seeds":
        print(f"wrote {write_seeds(Path(argv[2]))} seed inputs to {argv[2]}")
        return
    # atheris has no type information; it is an optional, Linux-only development tool.
    atheris = importlib.import_module("atheris")
    with atheris.instrument_imports(include=["crypto"]):
        from tests.fuzz import targets

    chosen = targets.build_targets()
    counts: Counter[str] = Counter()
    counts_file = os.environ.get("KAMUS_FUZZ_COUNTS")

    def save_counts() -> None:
        if counts_file:
            Path(counts_file).write_text(json.dumps(dict(counts), sort_keys=True))

    atexit.register(save_counts)

    def test_one_input(data: bytes) -> None:
        selector, text = decode(data)
        target = chosen[selector % len(chosen)]
        counts[target.name] += 1
        if counts.total() % COUNTS_EVERY == 0:
            save_counts()
        target.check(text)

    atheris.Setup(argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main(sys.argv)
