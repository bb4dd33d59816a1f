"""The web layer every service shares: errors as problem details (``problems``), the request
recording and body limit middleware (``middleware``), the v2 batch models and readiness
(``api``), and the FastAPI skeleton (``app``)."""
