"""The public encryptor: anyone may encrypt for a service account; nobody can decrypt here.

Whatever imports this package first (say, ``uvicorn encryptor.app:...``), kamus/kubernetes_alone.py
runs before any ``kubernetes`` module, so that the synchronous client never loads.
"""

import kamus.kubernetes_alone  # noqa: F401 - before any kubernetes import
