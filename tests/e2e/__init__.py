"""End to end: real `kamus` processes (serve, dev, init, create-key-secret) over loopback."""
