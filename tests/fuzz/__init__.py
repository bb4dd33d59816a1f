"""Fuzzing of every ciphertext parser in ``crypto/``.

``targets`` names each parser and the contract it must keep, with seed ciphertexts of every format;
``tests/test_fuzz.py`` drives the targets with hypothesis, and ``atheris_parsers`` with atheris
(coverage-guided, libFuzzer). Run the atheris harness by hand, for longer, with e.g.::

    .venv/bin/python -m tests.fuzz.atheris_parsers -runs=1000000 -max_len=16384 CORPUS_DIR

after ``.venv/bin/python -m tests.fuzz.atheris_parsers --write-seeds CORPUS_DIR``.
"""
