"""A WSGI app for tests/test_forking.py: its pool is made at import, in gunicorn's master.

Each process tags its connections with its pid (application_name), so the server shows which
process holds which connection. Environment: PSYCOPOOL_FORK_DSN, PSYCOPOOL_FORK_APP_NAME,
PSYCOPOOL_FORK_DRIVER ("psycopg2" or "psycopg").
"""

import os

from psycopool import ConnectionPool

PREFIX = os.environ["PSYCOPOOL_FORK_APP_NAME"]

pool = ConnectionPool(
    os.environ["PSYCOPOOL_FORK_DSN"],
    kwargs=lambda: {"application_name": f"{PREFIX}-{os.getpid()}"},
    min_size=1,
    max_size=2,
    timeout=10.0,
    driver=os.environ.get("PSYCOPOOL_FORK_DRIVER", "psycopg2"),
    open="lazy",  # connects at the first request of each worker, never in the master
)


def app(environ, start_response):
    with pool.connection() as conn:
        cur = conn.cursor()
        cur.execute("SELECT pg_backend_pid(), current_setting('application_name')")
        backend, name = cur.fetchone()
        cur.close()
    body = f"{os.getpid()} {backend} {name}".encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
