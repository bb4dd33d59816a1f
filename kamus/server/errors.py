"""Why a service cannot start: the one error every start-up check raises (settings, key
providers, the Kubernetes client), whose message says what to set. ``kamus serve`` prints it as
one line and exits."""


class ConfigurationError(Exception):
    """The service cannot start as configured; the message says what to set."""
