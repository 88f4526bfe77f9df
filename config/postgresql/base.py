"""Django's PostgreSQL backend, with a health check that needs no round trip while the
connection is fine, and cursors that bind parameters on the server for the hot statements.

Django checks a persistent connection at the start of each request (CONN_HEALTH_CHECKS) with a
`SELECT 1`: one more round trip on every API call, a third of the labelling API's statements
(bench/queue_bench.py). A server that goes away (a restart, an idle timeout, an administrator's
pg_terminate_backend) sends its goodbye and closes the socket, so an idle connection's socket
turns readable; while it is not, nothing has happened and the connection is kept without asking.
When it is, Django's own `SELECT 1` decides, and a dead connection is replaced before the request
uses it. A server that vanishes without a word (a host that loses power) fails the check either
way only when the network says so; that case is the same with Django's check.
"""

import select

from django.db.backends.postgresql import base


class DatabaseWrapper(base.DatabaseWrapper):
    def prepared_cursor(self):
        """Django's cursor, but binding parameters on the server: psycopg then prepares a
        statement the fifth time a connection runs it (OPTIONS prepare_threshold), so PostgreSQL
        stops parsing and planning it on every request (core/rows.py).

        Everything else is Django's own path: the health check, the time zone, error
        translation, query logging and the test suite's query counts.
        """
        self.close_if_health_check_failed()
        self.ensure_connection()
        connection, usual = self.connection, self.connection.cursor_factory
        connection.cursor_factory = base.ServerBindingCursor
        try:
            return self.cursor()
        finally:
            connection.cursor_factory = usual

    def is_usable(self) -> bool:
        if self.connection is None or self.connection.closed:
            return False
        try:
            readable, _, _ = select.select([self.connection.fileno()], [], [], 0)
        except (OSError, ValueError):  # the socket is gone
            return False
        return not readable or super().is_usable()
