"""A pytest plugin (-p tests.annotate.on_sqlite) for runs that must be on the embedded SQLite:
every test that touches the database fails if it is not."""

import pytest


@pytest.fixture(autouse=True)
def _on_sqlite(request):
    if "django_db_setup" in request.fixturenames:
        from django.db import connection

        assert connection.vendor == "sqlite", f"meant for SQLite, ran on {connection.vendor}"
