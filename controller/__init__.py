"""The KamusSecret controller: ``soluto.com/v1alpha2`` KamusSecret → native Secret.

``reconcile`` decides (pure functions: what the Secret and the status should be), ``controller``
acts (watches, a work queue, leader election, the Kubernetes calls), ``app`` serves health and
metrics and runs it under ``kamus serve controller``.
"""
