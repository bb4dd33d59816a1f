"""The committed test vectors of ``tests/vectors/``: ciphertexts that must keep opening."""

import json
from pathlib import Path
from typing import Any

VECTORS = Path(__file__).resolve().parent.parent / "vectors"
Vector = dict[str, Any]


def load(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((VECTORS / name).read_text(encoding="utf-8"))
    return data


A1 = load("aes-a1.json")
LEGACY = load("kamus-legacy-aes.json")
E1 = load("envelope-e1.json")
M1 = load("sealed-m1.json")
RECIPIENTS = load("recipients-m1.json")
