"""The KamusSecret controller: ``soluto.com/v1alpha2`` KamusSecret → native Secret.

Where each concern lives:

* ``objects``: the typed KamusSecret and Secret, and the one place the apiserver's JSON gets
  those types;
* ``reconcile``: the rules, as pure functions (what the Secret and the status should be, what is
  refused);
* ``controller``: one KamusSecret reconciled (refuse, decrypt, write the Secret, the status and
  an Event);
* ``runner``: when to reconcile: leading, watching, queueing and the workers, put together from
  ``kamus.server.lease`` (leader election, shared with the decryptor), ``informer`` (list and
  watch), ``workqueue`` and ``pacing`` (rate limit and backoff), which know nothing of
  KamusSecrets;
* ``app``: ``kamus serve controller``, with its health and metrics endpoints.

Its modules import ``kubernetes``: kamus/kubernetes_alone.py runs first, so that they load the
asyncio client alone.
"""

import kamus.kubernetes_alone  # noqa: F401 - before any kubernetes import
