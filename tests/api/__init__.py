"""The services' APIs in-process (FastAPI's TestClient or a loopback server), and the command
line against them."""
