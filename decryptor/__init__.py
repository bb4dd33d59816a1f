"""The internal decryptor: plaintext only for the service account a value was encrypted for.

Whatever imports this package first (say, ``uvicorn decryptor.app:...``), kamus/kubernetes_alone.py
runs before any ``kubernetes`` module, so that the synchronous client never loads.
"""

import kamus.kubernetes_alone  # noqa: F401 - before any kubernetes import
