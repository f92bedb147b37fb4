"""A Django database backend drawing connections from a psycopool pool.

``DATABASES["default"]["ENGINE"] = "psycopool.django"``, with the pool configured by
``OPTIONS["pool"]`` as for Django's own option (``True``, or a dict of
:class:`psycopool.ConnectionPool` arguments). Works with psycopg 3 and psycopg2,
whichever Django's PostgreSQL backend uses. See ``docs/django.md``.
"""
