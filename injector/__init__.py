"""The injector: a mutating admission webhook that adds Kamus's init container to opted-in pods
(docs/injection.md). ``pods`` decides and patches, ``certs`` and ``tls`` keep its HTTPS, ``app``
serves the AdmissionReview API."""
