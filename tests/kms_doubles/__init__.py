"""Doubles of the cloud key managers that speak their real wire protocols on 127.0.0.1."""
