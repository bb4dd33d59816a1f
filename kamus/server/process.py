"""What a service's process does about the keys in its memory: no core dumps, and SIGHUP
empties the data-key cache (docs/threat-model.md, "Issue 20: the data-key cache")."""

import asyncio
import contextlib
import ctypes
import logging
import resource
import signal
from collections.abc import Iterator

from crypto import KeyManager
from crypto.datakeys import DataKeyCache

log = logging.getLogger(__name__)

PR_SET_DUMPABLE = 4  # <linux/prctl.h>


def no_core_dumps() -> None:
    """A crash writes no core file, and no other process of the same user may ptrace this one
    or read its /proc/<pid>/mem: both would hold the master key and the cached data keys. The
    dumpable flag goes back to 1 on exec, so each worker process calls this again."""
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) != 0:
            log.warning("prctl(PR_SET_DUMPABLE, 0) failed (errno %d)", ctypes.get_errno())
    except (OSError, AttributeError):  # not Linux: the rlimit alone
        log.info("prctl is not available; core dumps are off by rlimit only")


@contextlib.contextmanager
def cache_cleared_on_sighup(key_manager: KeyManager) -> Iterator[None]:
    """``kill -HUP`` empties the data-key cache, say right after disabling a KMS key: without
    it, values whose keys are cached keep opening for up to MaxAgeSeconds."""
    cache = getattr(key_manager, "data_keys", None)
    if not isinstance(cache, DataKeyCache):
        yield  # the AES provider unwraps nothing, so caches nothing
        return
    loop = asyncio.get_running_loop()

    def clear() -> None:
        entries = len(cache)
        cache.clear()
        log.info("SIGHUP: the data-key cache is empty (%d entries dropped)", entries)

    try:
        loop.add_signal_handler(signal.SIGHUP, clear)
    except (ValueError, RuntimeError, NotImplementedError):
        # Not the main thread (a test's app), or no signals here: nothing to undo.
        yield
        return
    try:
        yield
    finally:
        loop.remove_signal_handler(signal.SIGHUP)
