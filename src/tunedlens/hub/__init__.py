"""Lens collections on the hub: package, verify, upload, download."""
