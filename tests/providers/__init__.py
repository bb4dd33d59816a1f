"""The key providers through their real SDKs against the KMS doubles: behaviour, faults and
outages."""
