"""``async-contention`` and ``async-storm``: many tasks on few connections, and cancellations."""

from __future__ import annotations

import asyncio
import heapq
import random
import time
from collections.abc import Sequence
from typing import Any

from psycopool.bench.harness import (
    SLEEP_SQL,
    Column,
    Context,
    Table,
    _error_text,
    _pct,
    percentiles_ms,
)
from psycopool.bench.harness_async import _async, _opened, _run
from psycopool.bench.peers_async import AsyncPeer
from psycopool.bench.peers_base import Peer, app_name, dsn_for


async def _contend(peer: AsyncPeer, tasks: int, total: int) -> dict[str, Any]:
    """``tasks`` tasks sharing ``total`` operations; waits, FIFO inversions, first done."""
    waits: list[float] = []
    arrivals = iter(range(10**9))
    waiting: list[int] = []  # arrival numbers of borrows not yet granted (a heap)
    granted: set[int] = set()
    out_of_order = errors = ops = 0
    done: list[float] = []
    start = time.perf_counter()

    async def borrow_and_use() -> None:
        nonlocal out_of_order, errors, ops
        me = next(arrivals)
        heapq.heappush(waiting, me)
        t0 = time.perf_counter()
        cm = peer.aconnection() if peer.uses_context else None
        try:
            conn = await (cm.__aenter__() if cm is not None else peer.aget())
        except Exception:
            errors += 1
            return
        waits.append(time.perf_counter() - t0)
        while waiting[0] in granted:
            granted.discard(heapq.heappop(waiting))
        if waiting[0] != me:
            out_of_order += 1  # someone who asked earlier is still waiting
        granted.add(me)
        failure: BaseException | None = None
        try:
            await peer.aquery(conn, SLEEP_SQL)
            ops += 1
        except Exception as exc:
            failure = exc
            errors += 1
        if cm is not None:
            exc_info = (type(failure), failure, None) if failure else (None, None, None)
            await cm.__aexit__(*exc_info)
        else:
            await peer.aput(conn)

    async def worker(n: int) -> None:
        for _ in range(n):
            await borrow_and_use()
        done.append(time.perf_counter() - start)

    shares = [total // tasks + (1 if i < total % tasks else 0) for i in range(tasks)]
    await asyncio.gather(*(worker(n) for n in shares if n))
    wall = time.perf_counter() - start
    waits.sort()
    return {
        "ops_per_s": ops / wall if wall > 0 else 0.0,
        "wall_s": wall,
        "wait_p50_ms": 1000.0 * _pct(waits, 50),
        "wait_p99_ms": 1000.0 * _pct(waits, 99),
        "wait_max_ms": 1000.0 * (waits[-1] if waits else 0.0),
        "first_done_s": min(done) if done else 0.0,
        "out_of_order": float(out_of_order),
        "errors": float(errors),
        "_waits": waits,
    }


def run_contention(ctx: Context, peers: Sequence[type[Peer]]) -> list[Table]:
    s = ctx.settings
    tables = []
    for n_tasks in s.async_tasks:
        total = s.async_ops
        table = Table(
            workload="async-contention",
            title=(
                f"async-contention: {n_tasks} tasks on max {s.pool_size} connections, {total}"
                " x (borrow, pg_sleep(0.001), return) shared between them"
            ),
            params={"tasks": n_tasks, "ops": total, "pool_size": s.pool_size},
            columns=[
                Column("ops_per_s", "ops/s", ".0f"),
                Column("wait_p50_ms", "wait p50 ms", ".1f"),
                Column("wait_p99_ms", "wait p99 ms", ".1f"),
                Column("wait_max_ms", "wait max ms", ".0f"),
                Column("first_done_s", "first task done s", ".2f"),
                Column("out_of_order", "grants out of arrival order", ".0f"),
                Column("errors", "app errors", ".0f"),
            ],
            primary="ops_per_s",
            higher_is_better=True,
        )
        for peer_cls in _async(peers):
            ctx.tick(f"async-contention {n_tasks} tasks: {peer_cls.key}")

            async def main(
                peer_cls: type[AsyncPeer] = peer_cls, n_tasks: int = n_tasks, total: int = total
            ) -> dict[str, Any]:
                async with _opened(ctx, peer_cls, s.pool_size) as peer:
                    return await _contend(peer, n_tasks, total)

            try:
                row = _run(main)
            except Exception as exc:
                table.errors[peer_cls.key] = _error_text(exc)
                continue
            table.distributions[peer_cls.key] = percentiles_ms(row.pop("_waits"))
            table.rows[peer_cls.key] = row
        tables.append(table)
    return tables


async def _storm(peer: AsyncPeer, n: int, size: int, seed: int) -> dict[str, float]:
    rnd = random.Random(seed)
    holding: set[int] = set()
    counts = dict.fromkeys(("lent_twice", "errors"), 0)

    async def work() -> None:
        async with peer.aconnection() as conn:
            if id(conn) in holding:
                counts["lent_twice"] += 1
            holding.add(id(conn))
            try:
                await peer.aquery(conn, "SELECT 1")
            finally:
                holding.discard(id(conn))

    start = time.perf_counter()
    tasks = [asyncio.ensure_future(work()) for _ in range(n)]
    requested = []
    for victim in rnd.sample(tasks, n // 3):
        await asyncio.sleep(rnd.random() * 0.002 if rnd.random() < 0.5 else 0)
        if victim.cancel():
            requested.append(victim)
    results = await asyncio.gather(*tasks, return_exceptions=True)
    seconds = time.perf_counter() - start
    swallowed = sum(1 for t in requested if not t.cancelled())
    errors = sum(1 for r in results if isinstance(r, Exception))
    # Slots lost: how many of its connections the pool can still lend at once.
    held: list[Any] = []

    async def take() -> None:
        held.append(await peer.aget())

    grabs = [asyncio.ensure_future(take()) for _ in range(size)]
    await asyncio.wait(grabs, timeout=3.0)
    for grab in grabs:
        grab.cancel()
    lost = size - len(held)
    for conn in held:
        await peer.aput(conn)
    return {
        "cancelled": float(len(requested)),
        "swallowed": float(swallowed),
        "lent_twice": float(counts["lent_twice"]),
        "lost_slots": float(lost),
        "errors": float(errors),
        "seconds": seconds,
    }


def run_storm(ctx: Context, peers: Sequence[type[Peer]]) -> list[Table]:
    s = ctx.settings
    table = Table(
        workload="async-storm",
        title=(
            f"async-storm: {s.storm_tasks} tasks on {s.pool_size} connections (borrow, SELECT 1,"
            f" return), a third cancelled at random moments; {s.storm_runs} seeds, summed"
        ),
        params={"tasks": s.storm_tasks, "runs": s.storm_runs, "pool_size": s.pool_size},
        columns=[
            Column("cancelled", "cancels", ".0f"),
            Column("swallowed", "swallowed cancels", ".0f"),
            Column("lent_twice", "lent twice", ".0f"),
            Column("lost_slots", "slots lost", ".0f"),
            Column("left_after_close", "server conns after close", ".0f"),
            Column("errors", "other errors", ".0f"),
            Column("seconds", "s per run", ".2f"),
        ],
        primary="swallowed",
    )
    for peer_cls in _async(peers):
        if not peer_cls.uses_context and f"{peer_cls.key}-with" in {p.key for p in peers}:
            continue  # one row per pool: its `async with` form
        total: dict[str, float] = {}
        try:
            for seed in range(s.storm_runs):
                ctx.tick(f"async-storm: {peer_cls.key} run {seed + 1}")

                async def main(
                    peer_cls: type[AsyncPeer] = peer_cls, seed: int = seed
                ) -> dict[str, float]:
                    peer = peer_cls()
                    app = app_name(peer_cls.key)
                    await peer.aopen(dsn_for(ctx.dsn, peer_cls.key), s.pool_size, s.pool_size)
                    try:
                        row = await _storm(peer, s.storm_tasks, s.pool_size, seed)
                    finally:
                        await peer.aclose()
                    row["left_after_close"] = float(ctx.admin.wait_count(app, 0, timeout=2.0))
                    return row

                for k, v in _run(main).items():
                    total[k] = total.get(k, 0.0) + v
        except Exception as exc:
            table.errors[peer_cls.key] = _error_text(exc)
            continue
        total["seconds"] /= s.storm_runs
        table.rows[peer_cls.key] = total
    return [table]
