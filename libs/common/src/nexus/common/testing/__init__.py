"""Test support shared by every package's tests: real NATS, real servers, free ports.

Loaded as a pytest plugin (`-p nexus.common.testing.plugin` in the root pyproject), so its
fixtures are available in every test folder.
"""
