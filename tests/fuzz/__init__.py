"""Fuzzing of every ciphertext parser in ``crypto/``.

``targets`` names what is fuzzed in-process (what never crosses a network: ``classify``, the
base64 decoders, the e1 envelope, Kamus's legacy formats and the AES provider), the contract every
``decrypt`` keeps, and seed ciphertexts of every format. ``tests/fuzz/test_fuzz.py`` drives the
targets with hypothesis, and the cloud providers through their real SDKs against the KMS doubles
(moto, the Cloud KMS and Key Vault doubles) with the same contract and seeds; ``atheris_parsers``
drives the targets with atheris (coverage-guided, libFuzzer). Run the atheris harness by hand, for
longer, with e.g.::

    .venv/bin/python -m tests.fuzz.atheris_parsers -runs=1000000 -max_len=16384 CORPUS_DIR

after ``.venv/bin/python -m tests.fuzz.atheris_parsers --write-seeds CORPUS_DIR``.
"""
