"""Scale-out tests reuse the CLI environment of the end-to-end tests (one device, a shared compile cache)."""

from tests.e2e.conftest import cli_env  # noqa: F401  (a fixture)
