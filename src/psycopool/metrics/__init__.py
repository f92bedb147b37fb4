"""Exporters of psycopool's pool metrics: optional, each behind its own extra.

- :mod:`psycopool.metrics.otel`: OpenTelemetry, the semantic conventions'
  ``db.client.connection.*`` instruments (``pip install 'psycopool[otel]'``).
- :mod:`psycopool.metrics.prometheus`: a ``prometheus_client`` collector
  (``pip install 'psycopool[prometheus]'``).

Both accept any psycopool pool (the modern pools and the ``psycopool.pool``
drop-in). Attaching one starts the recording of wait, use and connect times
(see ``psycopool/_timings.py``); ``import psycopool`` imports neither library.
See ``docs/observability.md``.
"""
