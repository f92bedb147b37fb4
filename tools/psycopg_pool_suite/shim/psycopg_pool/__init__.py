"""``psycopg_pool``'s public names, resolved to psycopool's: the outside judge's adapter.

Put this folder first on ``sys.path`` and psycopg's own pool tests (``tests/pool/`` in the
psycopg repository) import psycopool where they ``import psycopg_pool``. The adapter only
renames arguments; it adds no behaviour:

- ``connection_class=C`` becomes psycopool's ``connection_class=C`` if psycopool's pool takes
  that parameter, else ``driver=C`` (psycopool picks the driver from a connection class);
  without ``connection_class`` the pool gets ``driver="psycopg"`` (psycopg_pool is psycopg 3
  only).
- An argument passed with the value that means "psycopg_pool's default" (``open=None``,
  ``check=None``, ``reset=None``, ...) is left out when psycopool names that default
  differently, so psycopool's own default applies (see the README: its default ``check`` is a
  liveness check, its default ``reset`` a rollback, as psycopg_pool always does).
- An argument psycopool's pool does not accept is passed anyway when its value is not
  psycopg_pool's default, so a missing feature fails loudly (``TypeError``) instead of
  being silently ignored.

Names psycopool does not have (yet) are simply absent: ``pool.NullConnectionPool`` then
raises ``AttributeError`` in the test that uses it. Private modules (``psycopg_pool.base``,
``psycopg_pool.pool``, ...) are deliberately not provided.
"""

from __future__ import annotations

import inspect
import os
import types
from typing import Any

import psycopool
from psycopool import PoolClosed, PoolTimeout, TooManyRequests

__version__ = "psycopool-" + psycopool.__version__

_UNSET = object()

#: psycopg_pool's defaults for the constructor parameters (psycopg_pool 3.3).
_PSYCOPG_POOL_DEFAULTS: dict[str, Any] = {
    "kwargs": None,
    "min_size": 4,
    "max_size": None,
    "open": None,
    "configure": None,
    "check": None,
    "reset": None,
    "name": None,
    "close_returns": False,
    "timeout": 30.0,
    "max_waiting": 0,
    "max_lifetime": 3600.0,
    "max_idle": 600.0,
    "reconnect_timeout": 300.0,
    "reconnect_failed": None,
    "num_workers": 3,
}

#: Parameters whose psycopg_pool "nothing" value (None) psycopool spells as its own default.
_LEAVE_OUT_IF_NONE = frozenset({"open", "check", "reset"})


def _is_default(value: Any, default: Any) -> bool:
    if value is default:
        return True
    number = (int, float)
    return (
        isinstance(value, number)
        and isinstance(default, number)
        and not isinstance(value, bool)
        and not isinstance(default, bool)
        and value == default
    )


def _rename(params: dict[str, inspect.Parameter], kwargs: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    conn_cls = kwargs.pop("connection_class", _UNSET)
    takes_any = any(p.kind is p.VAR_KEYWORD for p in params.values())
    for key, value in kwargs.items():
        if key in _LEAVE_OUT_IF_NONE and value is None:
            continue
        if key not in params and not takes_any:
            default = _PSYCOPG_POOL_DEFAULTS.get(key, _UNSET)
            if _is_default(value, default):
                continue  # psycopg_pool's default: nothing asked for
        out[key] = value
    if conn_cls is not _UNSET:
        if "connection_class" in params or takes_any:
            out["connection_class"] = conn_cls
        else:
            out["driver"] = conn_cls
    elif "driver" in params:
        out["driver"] = "psycopg"
    return out


def _parameters(cls: type[Any]) -> dict[str, inspect.Parameter]:
    """The constructor's named parameters, following ``**kwargs`` up the MRO."""
    params: dict[str, inspect.Parameter] = {}
    for klass in cls.__mro__:
        if "__init__" not in vars(klass) or klass is object:
            continue
        own = inspect.signature(klass.__init__).parameters
        params.update({k: v for k, v in own.items() if v.kind is not v.VAR_KEYWORD})
        if not any(v.kind is v.VAR_KEYWORD for v in own.values()):
            break
    return params


#: Probe mode only (``run.py --probe``, never counted as passing): read-only views named like
#: psycopg_pool's private attributes, to see whether a test that fails on them alone checks
#: behaviour psycopool gets right.
_PROBES: dict[str, Any] = {
    "_pool": property(lambda self: [entry.conn for entry in self._engine.idle]),
    "_waiting": property(lambda self: self._engine.waiters),
    "_nconns": property(lambda self: self._engine.size),
}


def _adapted(name: str) -> type[Any] | None:
    base = getattr(psycopool, name, None)
    if base is None:
        return None
    params = _parameters(base)
    type_params = getattr(base, "__parameters__", ())
    bases = (base[type_params],) if type_params else (base,)

    def __init__(self: Any, conninfo: Any = "", **kwargs: Any) -> None:
        base.__init__(self, conninfo, **_rename(params, kwargs))

    namespace: dict[str, Any] = {
        "__init__": __init__,
        "__module__": "psycopg_pool",
        "__doc__": base.__doc__,
    }
    if os.environ.get("PSYCOPG_POOL_SUITE_PROBE") == "1":
        namespace.update(_PROBES)
    cls = types.new_class(name, bases, exec_body=lambda ns: ns.update(namespace))
    cls.__qualname__ = name
    return cls


_NAMES = ("ConnectionPool", "NullConnectionPool", "AsyncConnectionPool", "AsyncNullConnectionPool")

__all__ = ["PoolClosed", "PoolTimeout", "TooManyRequests"]
for _name in _NAMES:
    _cls = _adapted(_name)
    if _cls is not None:
        globals()[_name] = _cls
        __all__.append(_name)
