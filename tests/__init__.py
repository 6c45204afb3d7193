"""The test suite (a regular package, so that `tests.*` imports find it before any top-level `tests` a dependency installs)."""
