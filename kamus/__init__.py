"""The ``kamus`` command and the runtime the services share (settings, logs, metrics, clients)."""

__version__ = "0.1.0"
