"""Peer adapters: every pool the bench compares, behind one small interface.

Adding a pool is one subclass of :class:`Peer` appended to :data:`PEERS`: say how to open it
(``min_size``, ``max_size``), how to borrow (:meth:`Peer.get`) and return (:meth:`Peer.put`),
whether it raises when exhausted instead of waiting, and (for ``with``-style rows) override
:meth:`Peer.connection` and set ``uses_context``. A peer whose library is missing is skipped with
the reason :meth:`Peer.missing` gives.

Every connection a peer opens carries ``application_name=psycopool-bench-<key>``, so the
server-side monitor can count each peer's connections in ``pg_stat_activity``.

The peer libraries are imported lazily, inside the adapters, and typed as ``Any``. The interface
is in ``peers_base.py``, the adapters in ``peers_libs.py``, the floors in ``peers_floors.py``; this
module is the registry.
"""

from __future__ import annotations

from psycopool.bench.peers_async import ASYNC_PEERS
from psycopool.bench.peers_base import APP_PREFIX, Peer, app_name, dsn_for
from psycopool.bench.peers_floors import FloorConditionPeer, FloorLockPeer
from psycopool.bench.peers_libs import (
    DBUtilsPeer,
    Psycopg2PoolPeer,
    Psycopg2PoolPyPIPeer,
    PsycopgPoolPeer,
    PsycopgPoolWithPeer,
    PsycopoolDropInPeer,
    PsycopoolOtelPeer,
    PsycopoolPeer,
    PsycopoolPingPeer,
    PsycopoolPrometheusPeer,
    PsycopoolPsycopgPeer,
    PsycopoolWithPeer,
    SQLAlchemyPeer,
)

__all__ = [
    "APP_PREFIX",
    "PEERS",
    "Peer",
    "app_name",
    "dsn_for",
    "peer_by_key",
]


#: Every peer, in table order. psycopool's rows first.
PEERS: tuple[type[Peer], ...] = (
    PsycopoolPeer,
    PsycopoolWithPeer,
    PsycopoolPsycopgPeer,
    PsycopoolPingPeer,
    PsycopoolPrometheusPeer,
    PsycopoolOtelPeer,
    PsycopoolDropInPeer,
    Psycopg2PoolPeer,
    PsycopgPoolPeer,
    PsycopgPoolWithPeer,
    SQLAlchemyPeer,
    DBUtilsPeer,
    Psycopg2PoolPyPIPeer,
    FloorLockPeer,
    FloorConditionPeer,
)


def all_peers() -> tuple[type[Peer], ...]:
    """The sync peers, then the async ones."""
    return PEERS + ASYNC_PEERS


def peer_by_key(key: str) -> type[Peer]:
    for peer in all_peers():
        if peer.key == key:
            return peer
    raise KeyError(key)
