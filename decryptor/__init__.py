"""The internal decryptor: plaintext only for the service account a value was encrypted for.

``kamus`` is imported first, whatever imports this package: it keeps ``import kubernetes...``
from loading the synchronous client (kamus/__init__.py), which a process that imported
``kubernetes`` before it would hold in memory for nothing.
"""

import kamus  # noqa: F401
