"""Warehouse writers take turns (DESIGN §9), across flow runs, processes and workers.

A turn is one slot of the Prefect global concurrency limit `elt-warehouse` (limit 1; each
environment but dev has its own, `elt-warehouse-<env>`, as it has its own warehouse), which the
Prefect server enforces: a scheduled run whose writing step finds the slot taken waits for it,
then completes. Inside its turn a step also holds the DuckDB file (core.warehouse), so
writers outside Prefect (the CLI, make build) and readers wait for it, and it for them.
The slot is leased and renewed while the step runs, so a long dbt build keeps it, and a killed
run's slot comes back when its lease (ELT_TURN_LEASE_SECONDS, 300) expires: a Prefect server's repossessor
releases expired leases. The servers this project starts itself (`make run`'s temporary API, `make
serve`'s server) keep their leases on disk, in PREFECT_HOME/concurrency_leases beside their
database, where a restart does not lose them (Prefect keeps them in the server's memory by
default). The temporary API runs no repossessor, so its runs release expired leases themselves:
when it starts, and while a step waits for its turn. Postgres needs no turns for its own sake
(MVCC), but runs take them there too: two builds publishing marts at once still clash.
"""

from __future__ import annotations

import contextvars
import fcntl
import functools
import logging
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager, nullcontext
from datetime import UTC, datetime
from pathlib import Path
from typing import ParamSpec, TypeVar
from uuid import UUID

from prefect.client.orchestration import get_client
from prefect.concurrency.sync import concurrency
from prefect.exceptions import ObjectAlreadyExists
from prefect.settings import PREFECT_API_URL, PREFECT_HOME, get_current_settings

from core.settings import DEFAULT_ENVIRONMENT, environment, seconds_setting
from core.warehouse import held_for_writing

P = ParamSpec("P")
R = TypeVar("R")
T = TypeVar("T")


WAREHOUSE_LIMIT = "elt-warehouse"


def warehouse_limit() -> str:
    """The environment's own limit: its warehouse is its own, so its writers take turns apart."""
    env = environment()
    return WAREHOUSE_LIMIT if env == DEFAULT_ENVIRONMENT else f"{WAREHOUSE_LIMIT}-{env}"


LEASE_VARIABLE = "ELT_TURN_LEASE_SECONDS"
DEFAULT_LEASE_SECONDS = 300
MIN_LEASE_SECONDS, MAX_LEASE_SECONDS = 60, 86_400  # what Prefect's server accepts
TURN_TAKEN = "warehouse turn taken"
TURN_RELEASED = "warehouse turn released"
# Prefect's lease storage that keeps leases as files in PREFECT_HOME/concurrency_leases.
LEASES_ON_DISK = "prefect.server.concurrency.lease_storage.filesystem"
LEASE_STORAGE_VARIABLE = "PREFECT_SERVER_CONCURRENCY_LEASE_STORAGE"
# Set in the process that started a temporary API keeping its leases on disk (and in the tests'
# harness): only there are expired leases released by a run; a real server's repossessor does it.
RELEASES_EXPIRED_LEASES = threading.Event()
# Held (shared) by each process whose Prefect server of this project is up on PREFECT_HOME.
LOCAL_SERVERS_LOCK = "local-prefect-servers.lock"


def ensure_warehouse_limit() -> None:
    """The one-slot limit, created if the server lacks it (serve creates it up front; flows
    deployed with prefect.yaml or run on a temporary API create it on their first turn)."""
    _ensure_limit_on(PREFECT_API_URL.value(), warehouse_limit())


@functools.cache
def _ensure_limit_on(api_url: str | None, limit: str) -> None:
    with get_client(sync_client=True) as client:
        try:
            client.upsert_global_concurrency_limit_by_name(limit, 1)
        except ObjectAlreadyExists:
            pass  # another run created it between the read and the create


def run_logger() -> logging.Logger | logging.LoggerAdapter:
    from prefect import get_run_logger
    from prefect.exceptions import MissingContextError

    try:
        return get_run_logger()
    except MissingContextError:
        return logging.getLogger(__name__)


def lease_seconds() -> float:
    """How long a turn's lease lasts unless renewed (renewed at 3/4 of it while the step runs)."""
    return seconds_setting(LEASE_VARIABLE, DEFAULT_LEASE_SECONDS, MIN_LEASE_SECONDS, MAX_LEASE_SECONDS)


@contextmanager
def local_server(start: Callable[[], T], stop: Callable[[T], object], *, runs_repossessor: bool) -> Iterator[T]:
    """A Prefect server of this project's own on PREFECT_HOME (`make run`'s temporary API, `make
    serve`'s server): `start()` starts it keeping its leases on disk, unless Prefect's settings name
    a lease storage; it is stopped with `stop` when the block ends. A run killed in its turn, or
    the server killed while a run holds one, so leaves a lease that expires. Without a repossessor
    (the temporary API), this process releases expired leases. With no other such server up on
    PREFECT_HOME as it starts (no run can take a turn meanwhile), the turns no lease holds, taken
    while leases were kept in memory, are given back. Yields what `start` returned."""
    on_disk = keep_leases_on_disk()
    if on_disk and not runs_repossessor:
        RELEASES_EXPIRED_LEASES.set()
    home = PREFECT_HOME.value()
    home.mkdir(parents=True, exist_ok=True)
    with (home / LOCAL_SERVERS_LOCK).open("w") as others:
        alone = try_lock(others, fcntl.LOCK_EX | fcntl.LOCK_NB)
        server = start()
        try:
            if on_disk:
                release_what_killed_runs_held(alone)
            fcntl.flock(others, fcntl.LOCK_SH)  # a server starting beside this one is not alone
            yield server
        finally:
            stop(server)


def keep_leases_on_disk() -> bool:
    """Whether the Prefect server about to be started from this process keeps its concurrency
    leases on disk: unless Prefect's settings name a lease storage of their own, it is made to."""
    chosen = get_current_settings().server.concurrency
    if "lease_storage" in chosen.model_fields_set and chosen.lease_storage != LEASES_ON_DISK:
        return False
    os.environ[LEASE_STORAGE_VARIABLE] = LEASES_ON_DISK  # the server's environment includes this process's
    return True


def release_what_killed_runs_held(alone: bool) -> None:
    """Expired leases released (when no repossessor does it); when no other server of this project
    is up, also turns no lease holds. A failure here is a warning: the runs' steps look for expired
    leases again while they wait, and a repossessor releases them as it goes."""
    try:
        reclaim_expired_turns()
        if alone:
            release_turns_without_a_lease()
    except Exception as error:
        print(f"warning: could not release the warehouse turns of killed runs: {error}", file=sys.stderr)


def try_lock(file, operation: int) -> bool:
    try:
        fcntl.flock(file, operation)
    except BlockingIOError:
        return False
    return True


def lease_storage():
    """The leases a temporary API keeps on disk (LEASES_ON_DISK), read where it keeps them."""
    from prefect.server.concurrency.lease_storage.filesystem import ConcurrencyLeaseStorage

    return ConcurrencyLeaseStorage(PREFECT_HOME.value() / "concurrency_leases")


@contextmanager
def leases_locked(storage_path: Path) -> Iterator[None]:
    """One process at a time releases leases (two would decrement one lease's slot twice)."""
    storage_path.mkdir(parents=True, exist_ok=True)
    with (storage_path / ".release.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def reclaim_expired_turns() -> None:
    """In the process in charge (RELEASES_EXPIRED_LEASES), releases through the API the expired
    leases kept on disk: their holder is gone (a killed run) or never learnt it held one (an
    acquisition Prefect's client sent again after the server had granted it). Each lease is read
    again under the lock, as Prefect's repossessor does, and left alone if it was renewed."""
    from prefect.utilities.asyncutils import run_coro_as_sync

    storage = lease_storage()
    if not RELEASES_EXPIRED_LEASES.is_set() or not storage.storage_path.is_dir():
        return
    with leases_locked(storage.storage_path), get_client(sync_client=True) as client:
        for lease_id in run_coro_as_sync(storage.read_expired_lease_ids()):
            lease = run_coro_as_sync(storage.read_lease(lease_id))
            if lease is None:  # an index entry whose lease file is gone
                run_coro_as_sync(storage.revoke_lease(lease_id))
            elif lease.expiration < datetime.now(UTC):
                client.release_concurrency_slots_with_lease(lease_id)
                run_logger().warning("released the expired warehouse turn of a run that is gone (lease %s)", lease_id)


def release_turns_without_a_lease() -> None:
    """On a server of this project as it starts, with no other one up on this PREFECT_HOME (so no
    run can take a turn meanwhile): the warehouse limits' slots that no unexpired lease holds
    (taken before the leases were kept on disk, by a run since killed) are given back."""
    from prefect.client.schemas.actions import GlobalConcurrencyLimitUpdate
    from prefect.utilities.asyncutils import run_coro_as_sync

    storage = lease_storage()
    held: dict[UUID, int] = {}
    if storage.storage_path.is_dir():
        for lease_id in run_coro_as_sync(storage.read_active_lease_ids(limit=10_000)):
            lease = run_coro_as_sync(storage.read_lease(lease_id))
            if lease and lease.expiration > datetime.now(UTC):
                for limit_id in lease.resource_ids:
                    held[limit_id] = held.get(limit_id, 0) + (lease.metadata.slots if lease.metadata else 0)
    with get_client(sync_client=True) as client:
        for limit in client.read_global_concurrency_limits(limit=200):
            leased = held.get(limit.id, 0)
            if limit.name.startswith(WAREHOUSE_LIMIT) and limit.active_slots > leased:
                client.update_global_concurrency_limit(limit.name, GlobalConcurrencyLimitUpdate(active_slots=leased))
                run_logger().warning("gave back %s's turn that no lease holds (a run killed in it)", limit.name)


def wait_for_turn(turn: ExitStack) -> None:
    """Enters the warehouse limit's slot into `turn`; while it waits, expired leases are looked for
    five times per lease length."""
    lease = lease_seconds()
    with expired_turns_reclaimed_every(lease / 5) if RELEASES_EXPIRED_LEASES.is_set() else nullcontext():
        turn.enter_context(
            concurrency(
                warehouse_limit(), occupy=1, lease_duration=lease, strict=True, raise_on_lease_renewal_failure=False
            )
        )


@contextmanager
def expired_turns_reclaimed_every(seconds: float) -> Iterator[None]:
    """reclaim_expired_turns every `seconds` on a thread of its own (in the run's context, so what it
    logs is the run's) until the block ends."""
    done = threading.Event()

    def reclaim() -> None:
        while not done.wait(seconds):
            try:
                reclaim_expired_turns()
            except Exception as error:  # the wait goes on; the next look may succeed
                run_logger().warning("could not look for expired warehouse turns: %s", error)

    looker = threading.Thread(target=contextvars.copy_context().run, args=(reclaim,), daemon=True)
    looker.start()
    try:
        yield
    finally:
        done.set()
        looker.join()


def writes_to_warehouse(step: Callable[P, R]) -> Callable[P, R]:
    """Run `step` in a warehouse turn; its start and end are logged to the run (with the wait)."""

    @functools.wraps(step)
    def in_turn(*args: P.args, **kwargs: P.kwargs) -> R:
        ensure_warehouse_limit()
        asked = time.monotonic()
        with ExitStack() as turn:
            wait_for_turn(turn)
            run_logger().info("%s after waiting %.1fs", TURN_TAKEN, time.monotonic() - asked)
            try:
                with held_for_writing():
                    return step(*args, **kwargs)
            finally:
                run_logger().info(TURN_RELEASED)

    return in_turn
