"""Test helpers shipped with the package (restic's ``testing.go`` model).

* :mod:`rempart.testing.backend_suite` — the conformance suite every storage backend passes.
* :mod:`rempart.testing.servers` — start and stop real servers (SeaweedFS S3, PostgreSQL) on
  loopback for tests.

Nothing in ``rempart`` outside tests may import this package.
"""
