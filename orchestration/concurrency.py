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
when it starts, and while a step waits for its turn; a turn's lease names its step, so a waiting
step also gives back its own grants whose answer never reached it (release_lost_grants). Postgres
needs no turns for its own sake (MVCC), but runs take them there too: two builds publishing marts at
once still clash.
"""

from __future__ import annotations

import contextvars
import fcntl
import functools
import logging
import os
import sqlite3
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, closing, contextmanager, nullcontext
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, ParamSpec, TypeAlias, TypeVar
from uuid import UUID

from prefect.client.orchestration import SyncPrefectClient, get_client
from prefect.client.schemas.objects import ConcurrencyLeaseHolder
from prefect.concurrency.sync import concurrency
from prefect.exceptions import ObjectAlreadyExists
from prefect.settings import PREFECT_API_URL, PREFECT_HOME, get_current_settings

if TYPE_CHECKING:
    from prefect.server.concurrency.lease_storage import ConcurrencyLimitLeaseMetadata
    from prefect.server.utilities.leasing import ResourceLease

from core.settings import DEFAULT_ENVIRONMENT, environment, seconds_setting
from core.warehouse import held_for_writing

P = ParamSpec("P")
R = TypeVar("R")
T = TypeVar("T")


WAREHOUSE_LIMIT = "elt-warehouse"
Lease: TypeAlias = "ResourceLease[ConcurrencyLimitLeaseMetadata]"  # as Prefect's lease storage reads one


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
# harness): only there does a run release expired leases, and a waiting step its lost grants; a
# real server's repossessor releases expired leases.
RELEASES_EXPIRED_LEASES = threading.Event()
# Held (shared) by each process whose Prefect server of this project is up on PREFECT_HOME.
LOCAL_SERVERS_LOCK = "local-prefect-servers.lock"
# Held while `make serve`'s server is up on PREFECT_HOME with Prefect's repossessor releasing the
# expired leases on disk.
REPOSSESSOR_LOCK = "repossessor.lock"


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
    serve`'s server), started by `start()` (which cleans up after itself if it fails) keeping its
    leases on disk, unless Prefect's settings name a lease storage, and stopped by `stop` when the
    block ends. A run killed in its turn, or the server killed while a run holds one, so leaves a
    lease that expires: the server's repossessor releases it, or, for a server without one (the
    temporary API), this process. With no other such server up on PREFECT_HOME, the turns no
    lease holds (taken while leases were kept in memory) are given back before the server starts,
    when no server of this project can grant a turn. Yields what `start` returned."""
    on_disk = keep_leases_on_disk()
    if on_disk and not runs_repossessor:
        RELEASES_EXPIRED_LEASES.set()
    home = PREFECT_HOME.value()
    home.mkdir(parents=True, exist_ok=True)
    with (home / LOCAL_SERVERS_LOCK).open("w") as others, (home / REPOSSESSOR_LOCK).open("w") as repossessor:
        if try_lock(others, fcntl.LOCK_EX | fcntl.LOCK_NB) and on_disk:
            warn_on_failure(give_back_turns_without_a_lease)
        # Alone: the others starting now find the lock shared (not alone). Not alone: waits for
        # one that is alone to finish giving back.
        fcntl.flock(others, fcntl.LOCK_SH)
        if runs_repossessor and on_disk and get_current_settings().server.services.repossessor.enabled:
            take_the_repossessor_lock(repossessor)
        server = start()
        try:
            if on_disk and not runs_repossessor:
                warn_on_failure(reclaim_expired_turns)  # a step waiting for its turn looks again
            yield server
        finally:
            stop(server)


def take_the_repossessor_lock(repossessor) -> None:
    """From now on runs on this PREFECT_HOME leave expired leases to this server's repossessor; a
    release one of them has begun ends first (serve allows one such server per PREFECT_HOME)."""
    with leases_locked(lease_storage().storage_path):
        fcntl.flock(repossessor, fcntl.LOCK_EX)


def keep_leases_on_disk() -> bool:
    """Whether the Prefect server about to be started from this process keeps its concurrency
    leases on disk: unless Prefect's settings name a lease storage of their own, it is made to."""
    chosen = get_current_settings().server.concurrency
    if "lease_storage" in chosen.model_fields_set and chosen.lease_storage != LEASES_ON_DISK:
        return False
    os.environ[LEASE_STORAGE_VARIABLE] = LEASES_ON_DISK  # the server's environment includes this process's
    return True


def warn_on_failure(release: Callable[[], None]) -> None:
    """A release of killed runs' turns that fails is a warning: the server still starts."""
    try:
        release()
    except Exception as error:
        print(f"warning: could not release the warehouse turns of killed runs: {error}", file=sys.stderr)


def try_lock(file, operation: int) -> bool:
    try:
        fcntl.flock(file, operation)
    except BlockingIOError:
        return False
    return True


def lease_storage():
    """The leases this project's servers keep on disk (LEASES_ON_DISK), read where they keep them."""
    from prefect.server.concurrency.lease_storage.filesystem import ConcurrencyLeaseStorage

    return ConcurrencyLeaseStorage(PREFECT_HOME.value() / "concurrency_leases")


@contextmanager
def leases_locked(storage_path: Path) -> Iterator[None]:
    """One process at a time releases leases (two would decrement one lease's slot twice)."""
    storage_path.mkdir(parents=True, exist_ok=True)
    with (storage_path / ".release.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def a_repossessor_is_up() -> bool:
    """Whether `make serve`'s server, whose repossessor releases expired leases, is up on PREFECT_HOME."""
    with (PREFECT_HOME.value() / REPOSSESSOR_LOCK).open("w") as repossessor:
        return not try_lock(repossessor, fcntl.LOCK_EX | fcntl.LOCK_NB)


@dataclass
class TurnAsked:
    """A step's ask for its turn, shared with the thread that looks at the leases while it waits."""

    holder: ConcurrencyLeaseHolder | None  # None outside a Prefect run: its grants cannot be told apart
    limit_id: UUID | None  # the warehouse limit's; None where no lease can be told to be the step's
    lock: threading.Lock = field(default_factory=threading.Lock)
    taken: bool = False
    released: set[UUID] = field(default_factory=set)  # its grants given back as lost

    def names(self, lease: Lease | None) -> bool:
        """Whether a lease on disk is one of this step's warehouse turns. (Prefect names the run's
        holder on its other leases too: tag and deployment concurrency. And the server keeps a holder
        model of its own, which never equals the client's, so their fields are compared.)"""
        holder = lease.metadata.holder if lease and lease.metadata else None
        return (
            self.holder is not None
            and holder is not None
            and (holder.type, holder.id) == (self.holder.type, self.holder.id)
            and self.limit_id in lease.resource_ids
        )

    def take(self) -> bool:
        """Called with the answer's grant in hand: True if the step holds it (from then on no lease
        naming it is given back); False if the lease it was answered with was just given back as
        lost (no turn of the step's is left on disk), so it must ask again."""
        with self.lock:
            if self.released and not any(self.names(lease) for _, lease in leases_on_disk(active=True)):
                self.released.clear()
                return False
            self.taken = True
            return True


def this_step() -> ConcurrencyLeaseHolder | None:
    """The lease holder a step's turn names: its task run, or its flow run (as Prefect tells which
    one runs the code)."""
    from prefect.context import TaskRunContext, get_run_context
    from prefect.exceptions import MissingContextError

    try:
        run = get_run_context()
    except MissingContextError:
        return None
    if isinstance(run, TaskRunContext):
        return ConcurrencyLeaseHolder(type="task_run", id=run.task_run.id)
    return ConcurrencyLeaseHolder(type="flow_run", id=run.flow_run.id) if run.flow_run else None


def lost_grant_age() -> float:
    """Seconds after which a lease naming a step that still waits is a grant whose answer never
    reached it: twice Prefect's request timeout. Until the first one is over the answer may still be
    on its way (the client waits that long, then sends the acquisition again); the second leaves the
    step's process room to take an answer in."""
    return 2 * get_current_settings().api.request_timeout


def leases_on_disk(*, active: bool | None = None) -> Iterator[tuple[UUID, Lease | None]]:
    """(id, lease) of the leases kept on disk: the active ones, the expired ones, or (None) both. A
    lease is None where its index entry outlived its file."""
    from prefect.utilities.asyncutils import run_coro_as_sync

    storage = lease_storage()
    if not storage.storage_path.is_dir():
        return
    ids = []
    if active in (True, None):
        ids += run_coro_as_sync(storage.read_active_lease_ids(limit=10_000))
    if active in (False, None):
        ids += run_coro_as_sync(storage.read_expired_lease_ids(limit=10_000))
    for lease_id in ids:
        yield lease_id, run_coro_as_sync(storage.read_lease(lease_id))


def reclaim_expired_turns(asked: TurnAsked | None = None) -> None:
    """In the process in charge (RELEASES_EXPIRED_LEASES), releases through the API the expired
    leases kept on disk: their holder is gone (a killed run) or never learnt it held one. Each lease
    is read again under the lock, as Prefect's repossessor does, and left alone if it was renewed.
    With `asked`, also that waiting step's lost grants (release_lost_grants). Left to the repossessor
    of a `make serve` up on the same PREFECT_HOME, which takes no lock of ours."""
    from prefect.utilities.asyncutils import run_coro_as_sync

    storage = lease_storage()
    if not RELEASES_EXPIRED_LEASES.is_set() or not storage.storage_path.is_dir():
        return
    with leases_locked(storage.storage_path):
        if a_repossessor_is_up():
            return
        with get_client(sync_client=True) as client:
            for lease_id, lease in leases_on_disk(active=False):
                if lease is None:  # an index entry whose lease file is gone
                    run_coro_as_sync(storage.revoke_lease(lease_id))
                elif lease.expiration < datetime.now(UTC):
                    client.release_concurrency_slots_with_lease(lease_id)
                    run_logger().warning(
                        "released the expired warehouse turn of a run that is gone (lease %s)", lease_id
                    )
            if asked is not None and asked.holder is not None:  # without one, no lease is the step's
                release_lost_grants(client, asked)


def release_lost_grants(client: SyncPrefectClient, asked: TurnAsked) -> None:
    """Releases the leases naming the step that asked, while it still waits, older than
    lost_grant_age(): grants whose answer never reached it (Prefect's client timed out waiting for
    it and sent the acquisition again, which now waits for the slot that grant holds). Under the
    step's lock: a step that has taken its turn keeps every lease naming it."""
    granted_before = datetime.now(UTC) - timedelta(seconds=lost_grant_age())
    for lease_id, lease in leases_on_disk(active=True):
        if lease is None or not asked.names(lease) or lease.created_at >= granted_before:
            continue  # not the step's, or its answer may still be on its way
        with asked.lock:
            if asked.taken:
                return
            asked.released.add(lease_id)  # before: an error may follow the server's release
            client.release_concurrency_slots_with_lease(lease_id)
        run_logger().warning(
            "released the warehouse turn granted %.0f s ago whose answer never reached this step (lease %s)",
            (datetime.now(UTC) - lease.created_at).total_seconds(),
            lease_id,
        )


def slots_held_by_leases() -> dict[str, int]:
    """Per concurrency limit id (as text), the slots the leases on disk hold, expired or not: an
    expired lease's slots are given back by whoever releases the lease."""
    held: dict[str, int] = {}
    for _, lease in leases_on_disk():
        for limit_id in lease.resource_ids if lease and lease.metadata else ():
            held[str(limit_id)] = held.get(str(limit_id), 0) + lease.metadata.slots
    return held


def give_back_turns_without_a_lease() -> None:
    """Before a server of this project starts, with no other one up on this PREFECT_HOME: the
    warehouse limits' slots that no lease on disk holds (taken while Prefect kept leases in the
    server's memory, by a run since killed or whose server restarted) are given back, in the
    server's own database. Only Prefect's default database, the SQLite file in PREFECT_HOME; one
    of your choosing is left alone."""
    database = PREFECT_HOME.value() / "prefect.db"
    chosen = get_current_settings().server.database.connection_url
    if chosen is None or chosen.get_secret_value() != f"sqlite+aiosqlite:///{database}" or not database.exists():
        return
    held = slots_held_by_leases()
    # The connection's block commits, or rolls back on an error.
    with closing(sqlite3.connect(database, timeout=60, isolation_level=None)) as connection, connection:
        connection.execute("begin immediate")  # no writer between the read and the update
        for limit_id, name, active_slots in warehouse_limits(connection):
            if active_slots > (leased := held.get(limit_id, 0)):
                connection.execute("update concurrency_limit_v2 set active_slots = ? where id = ?", (leased, limit_id))
                run_logger().warning("gave back %s's turn that no lease holds (a run killed in it)", name)


def warehouse_limits(connection: sqlite3.Connection) -> list[tuple[str, str, int]]:
    """(id, name, active slots) of the warehouse limits in a Prefect database; none before its tables exist."""
    if not connection.execute("select 1 from sqlite_master where name = 'concurrency_limit_v2'").fetchone():
        return []
    return connection.execute(
        "select id, name, active_slots from concurrency_limit_v2 where name = ? or name like ?",
        (WAREHOUSE_LIMIT, f"{WAREHOUSE_LIMIT}-%"),
    ).fetchall()


def wait_for_turn(turn: ExitStack) -> None:
    """Enters the warehouse limit's slot into `turn`, leased to this step (this_step()); while it
    waits (where RELEASES_EXPIRED_LEASES is set), expired leases and the step's own lost grants are
    looked for five times per lease length."""
    lease = lease_seconds()
    looking, holder = RELEASES_EXPIRED_LEASES.is_set(), this_step()
    asked = TurnAsked(holder, warehouse_limit_id() if looking and holder else None)
    with expired_turns_reclaimed_every(lease / 5, asked) if looking else nullcontext():
        while True:
            with ExitStack() as granted:  # given back unless the step holds it
                granted.enter_context(
                    concurrency(
                        warehouse_limit(),
                        occupy=1,
                        lease_duration=lease,
                        strict=True,
                        holder=asked.holder,
                        raise_on_lease_renewal_failure=False,
                    )
                )
                if asked.take():
                    turn.enter_context(granted.pop_all())
                    return
            run_logger().warning("the warehouse turn answered late was given back as lost: asking again")


def warehouse_limit_id() -> UUID:
    """The id of the warehouse limit, which a turn's lease lists among its resources."""
    with get_client(sync_client=True) as client:
        return client.read_global_concurrency_limit_by_name(warehouse_limit()).id


@contextmanager
def expired_turns_reclaimed_every(seconds: float, asked: TurnAsked) -> Iterator[None]:
    """reclaim_expired_turns(asked) every `seconds` on a thread of its own (in the run's context, so
    what it logs is the run's) until the block ends."""
    done = threading.Event()

    def reclaim() -> None:
        while not done.wait(seconds):
            try:
                reclaim_expired_turns(asked)
            except Exception as error:  # the wait goes on; the next look may succeed
                run_logger().warning("could not look for expired or lost warehouse turns: %s", error)

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
