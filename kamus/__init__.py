"""Kamus in Python: the ``kamus`` command (``kamus.cli``) and the runtime the services share
(``kamus.server``)."""

__version__ = "0.1.0"
