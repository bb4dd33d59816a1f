"""Free loopback ports for processes a test starts with an explicit ``--port``."""

import socket
from contextlib import ExitStack


def free_ports(count: int) -> tuple[int, ...]:
    """``count`` distinct ports, free a moment ago. Every socket stays bound until all are
    picked, because the kernel may hand a just-closed port out again (two calls to
    ``free_port()`` once returned the same port, and ``kamus dev`` rightly refused it)."""
    with ExitStack() as stack:
        sockets = [stack.enter_context(socket.socket()) for _ in range(count)]
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return tuple(int(sock.getsockname()[1]) for sock in sockets)


def free_port() -> int:
    return free_ports(1)[0]
