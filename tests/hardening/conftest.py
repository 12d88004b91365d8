"""The real-process fixture of the end-to-end tests, for the hardening tests that need it."""

from tests.e2e.conftest import start_proxy

__all__ = ["start_proxy"]
