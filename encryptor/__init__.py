"""The public encryptor: anyone may encrypt for a service account; nobody can decrypt here.

``kamus`` is imported first, whatever imports this package: it keeps ``import kubernetes...``
from loading the synchronous client (kamus/__init__.py).
"""

import kamus  # noqa: F401
