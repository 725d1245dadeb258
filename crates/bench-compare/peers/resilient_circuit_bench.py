#!/usr/bin/env python3
"""Per-call cost of resilient-circuit's PostgreSQL-backed circuit breaker.

Measures one protected call that succeeds: a trivial function returning its
argument, wrapped with a ``CircuitProtectorPolicy`` decorator whose state lives
in PostgreSQL (the library's ``rc_circuit_breakers`` table), as the library's
README shows. It runs ``rounds`` rounds of ``calls`` calls, prints each round's
mean time per call, then the median over rounds.

Setup is the library's own: the schema is created by its documented
``resilient-circuit-cli pg-setup --yes`` (with ``RC_DB_DSN``), the storage by
``create_storage()`` with ``RC_DB_STRICT=1`` (so it cannot fall back to
in-memory state silently). The table name is fixed by the library
(``public.rc_circuit_breakers``, which nothing else here uses); isolation is by
the library's namespace, one per run (``bench-compare-<pid>``), whose row is
deleted at the end.

Configuration, as close as the library allows to "open at a failure rate of 1/2
over the last 100 calls, min 100 calls, open for 30 s": the window size is the
*denominator* of ``failure_limit`` and Fraction reduces 50/100 to 1/2 (a window
of 2 calls), so it cannot say exactly that. The nearest is
``Fraction(51, 100)``: a window of the last 100 calls, judged only once it is
full (so min 100 calls), opening at >= 51 failures in 100 rather than >= 50.
``cooldown`` is 30 s; ``admission_refresh_interval`` is left at the library's
default (re-read shared state at most once a second before admitting a call).
Before measuring, 100 calls fill the window so every measured call persists a
full 100-entry log.

Run (needs psycopg 3, e.g. ``pip install resilient-circuit 'psycopg[binary]'``):

    python resilient_circuit_bench.py postgresql://postgres@127.0.0.1:5499/postgres [calls=200] [rounds=11]
"""

import os
import statistics
import subprocess
import sys
import time
from datetime import timedelta
from fractions import Fraction
from typing import NoReturn


def fail(message: str) -> NoReturn:
    print(f"error: {message}", file=sys.stderr)
    sys.exit(1)


def main() -> None:
    if len(sys.argv) < 2:
        fail(f"usage: {sys.argv[0]} POSTGRES_URL [calls=200] [rounds=11]")
    url = sys.argv[1]
    calls = int(sys.argv[2]) if len(sys.argv) > 2 else 200
    rounds = int(sys.argv[3]) if len(sys.argv) > 3 else 11

    try:
        import psycopg
    except ImportError:
        fail("psycopg 3 is not installed; run: pip install 'psycopg[binary]'")
    try:
        import resilient_circuit
        from resilient_circuit import CircuitProtectorPolicy, CircuitState
        from resilient_circuit.storage import create_storage
    except ImportError:
        fail("resilient-circuit is not installed; run: pip install resilient-circuit")

    try:
        psycopg.connect(url, connect_timeout=5).close()
    except psycopg.Error as e:
        fail(f"cannot connect to PostgreSQL at {url}: {e}")

    # The library's documented schema step: pg-setup, reading RC_DB_DSN.
    os.environ["RC_DB_DSN"] = url
    os.environ["RC_DB_STRICT"] = "1"
    setup = subprocess.run(
        [sys.executable, "-m", "resilient_circuit.cli", "pg-setup", "--yes"],
        capture_output=True, text=True, env=os.environ,
    )
    if setup.returncode != 0:
        fail(f"resilient-circuit-cli pg-setup failed:\n{setup.stdout}{setup.stderr}")

    storage = create_storage(namespace=f"bench-compare-{os.getpid()}")
    if storage.backend_name != "postgres":
        fail(f"expected PostgreSQL storage, got {storage.backend_name}")
    breaker = CircuitProtectorPolicy(
        resource_key="bench",
        storage=storage,
        cooldown=timedelta(seconds=30),
        failure_limit=Fraction(51, 100),
    )

    @breaker
    def protected(i: int) -> int:
        return i

    print(
        f"resilient-circuit {resilient_circuit.__version__}, psycopg "
        f"{psycopg.__version__} ({psycopg.pq.__impl__}), namespace {storage.namespace}"
    )
    try:
        for i in range(100):  # fill the 100-call window
            protected(i)
        means = []
        for r in range(rounds):
            started = time.perf_counter()
            for i in range(calls):
                protected(i)
            means.append((time.perf_counter() - started) * 1e6 / calls)
            print(f"round {r + 1:>2}: {means[-1]:9.1f} µs per call")
        if breaker.status is not CircuitState.CLOSED:
            fail(f"breaker left CLOSED: {breaker.status}")
    finally:
        storage.delete_state("bench")

    print(
        f"resilient-circuit protected call: median {statistics.median(means):.1f} "
        f"µs per call over {rounds} rounds of {calls}"
    )


if __name__ == "__main__":
    main()
