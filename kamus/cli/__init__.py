"""The ``kamus`` command (:mod:`kamus.cli.main`) and what only it uses: the HTTP client of the
encryptor and the decryptor, ``kamus init``, ``kamus seal``, ``kamus dev`` and
``kamus create-key-secret``. It reaches the services only through :mod:`kamus.server.services`.
"""

import kamus.kubernetes_alone  # noqa: F401 - before any kubernetes import in this package
