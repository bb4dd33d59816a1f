"""Who is calling, as Kubernetes says, for both services: the caller dependency and its errors
(``callers``), TokenReview and SubjectAccessReview (``reviews``), the cache of accepted tokens and
the TTL cache both services keep answers in (``cache``), and each client's fair share of the
apiserver calls (``fair_share``)."""
