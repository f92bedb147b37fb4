"""The project's own tests, run by ``manage.py test`` on the psycopool backend."""

import io
import os
import threading
import time

from django.conf import settings
from django.core.handlers.wsgi import WSGIHandler
from django.db import IntegrityError, close_old_connections, connection, transaction
from django.test import TestCase, TransactionTestCase

from shop.models import Item


def pool_stats():
    return connection.pool.stats()


def server_connections():
    """Client backends of this project's pool on the server (the test database)."""
    with connection.cursor() as cur:
        cur.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s"
            " AND backend_type = 'client backend'",
            [settings.DATABASES["default"]["OPTIONS"]["application_name"]],
        )
        return cur.fetchone()[0]


def wsgi_get(path):
    """One request through Django's WSGI handler: request_started/finished signals included."""
    environ = {
        "REQUEST_METHOD": "GET",
        "PATH_INFO": path,
        "SERVER_NAME": "testserver",
        "SERVER_PORT": "80",
        "wsgi.input": io.BytesIO(b""),
        "wsgi.url_scheme": "http",
    }
    status = []
    body = WSGIHandler()(environ, lambda s, h: status.append(s))
    try:
        return status[0], b"".join(body).decode()
    finally:
        body.close()  # sends request_finished: close_old_connections runs


class BackendTests(TestCase):
    def test_driver_is_the_one_asked_for(self):
        expected = os.environ.get("PSYCOPOOL_DJANGO_DRIVER", "psycopg")
        self.assertEqual(connection.Database.__name__, expected)
        self.assertIn(f"driver={expected}>", repr(connection.pool))


class AtomicTests(TestCase):
    """TestCase: every test runs inside transactions the backend's connection must keep."""

    @classmethod
    def setUpTestData(cls):
        Item.objects.create(name="apple", stock=3)

    def test_class_data_is_visible(self):
        self.assertEqual(Item.objects.get(name="apple").stock, 3)

    def test_changes_are_rolled_back_between_tests_a(self):
        Item.objects.create(name="pear")
        self.assertEqual(Item.objects.count(), 2)

    def test_changes_are_rolled_back_between_tests_b(self):
        Item.objects.create(name="plum")
        self.assertEqual(Item.objects.count(), 2)

    def test_failed_atomic_block_is_rolled_back(self):
        with self.assertRaises(ZeroDivisionError):
            with transaction.atomic():
                Item.objects.create(name="fig")
                raise ZeroDivisionError
        self.assertFalse(Item.objects.filter(name="fig").exists())

    def test_sql_error_inside_atomic_then_usable(self):
        with self.assertRaises(IntegrityError):
            with transaction.atomic():
                Item.objects.create(name="apple")
        self.assertEqual(Item.objects.count(), 1)

    def test_on_commit_runs_with_captured_callbacks(self):
        with self.captureOnCommitCallbacks(execute=True) as callbacks:
            with transaction.atomic():
                transaction.on_commit(lambda: None)
        self.assertEqual(len(callbacks), 1)


class PoolTests(TransactionTestCase):
    """Real commits, requests and threads: connections go back to the pool, never leak."""

    def setUp(self):
        Item.objects.create(name="apple", stock=100)

    def test_request_cycle_returns_the_connection(self):
        close_old_connections()  # CONN_MAX_AGE=0: back to the pool
        self.assertIsNone(connection.connection)
        self.assertEqual(pool_stats()["connections_in_use"], 0)
        for _ in range(5):
            status, body = wsgi_get("/count")
            self.assertEqual((status, body), ("200 OK", "1"))
            self.assertIsNone(connection.connection)
            self.assertEqual(pool_stats()["connections_in_use"], 0)

    def test_autocommit_and_atomic(self):
        with transaction.atomic():
            Item.objects.filter(name="apple").update(stock=99)
        self.assertTrue(connection.get_autocommit())
        close_old_connections()
        self.assertEqual(Item.objects.get(name="apple").stock, 99)
        try:
            with transaction.atomic():
                Item.objects.filter(name="apple").update(stock=0)
                raise RuntimeError("abort")
        except RuntimeError:
            pass
        close_old_connections()
        self.assertEqual(Item.objects.get(name="apple").stock, 99)

    def test_connection_left_outside_autocommit_is_cleaned(self):
        transaction.set_autocommit(False)
        Item.objects.filter(name="apple").update(stock=1)
        close_old_connections()  # autocommit not restored: Django closes, the pool rolls back
        self.assertEqual(pool_stats()["connections_in_use"], 0)
        self.assertTrue(connection.get_autocommit())
        self.assertEqual(Item.objects.get(name="apple").stock, 100)

    def test_threads_share_the_pool_within_its_bound(self):
        errors, bodies, peak = [], [], []
        stop = threading.Event()

        def watch():
            while not stop.is_set():
                peak.append(pool_stats()["pool_size"])
                time.sleep(0.005)

        def worker():
            try:
                for _ in range(10):
                    bodies.append(wsgi_get("/buy/apple"))
            except Exception as exc:  # counted, then asserted
                errors.append(exc)

        watcher = threading.Thread(target=watch)
        watcher.start()
        threads = [threading.Thread(target=worker) for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        stop.set()
        watcher.join()
        self.assertEqual(errors, [])
        self.assertEqual(len(bodies), 80)
        self.assertTrue(all(status == "200 OK" for status, _ in bodies), bodies[:3])
        self.assertEqual(Item.objects.get(name="apple").stock, 20)
        self.assertLessEqual(max(peak), settings.POOL_MAX)
        self.assertLessEqual(server_connections(), settings.POOL_MAX)
        close_old_connections()
        self.assertEqual(pool_stats()["connections_in_use"], 0)

    def test_conn_max_age_keeps_the_connection_until_it_expires(self):
        close_old_connections()
        connection.settings_dict["CONN_MAX_AGE"] = 0.3
        try:
            first = wsgi_get("/pid")[1]
            self.assertIsNotNone(connection.connection)  # kept by this thread
            self.assertEqual(wsgi_get("/pid")[1], first)
            self.assertEqual(pool_stats()["connections_in_use"], 1)
            time.sleep(0.4)
            close_old_connections()  # too old now: back to the pool, not closed
            self.assertIsNone(connection.connection)
            self.assertEqual(pool_stats()["connections_in_use"], 0)
        finally:
            connection.settings_dict["CONN_MAX_AGE"] = 0
