"""Warehouse writers take turns (DESIGN §9), across flow runs, processes and workers.

A turn is one slot of the Prefect global concurrency limit `elt-warehouse` (limit 1; each
environment but dev has its own, `elt-warehouse-<env>`, as it has its own warehouse), which the
Prefect server enforces: a scheduled run whose writing step finds the slot taken waits for it,
then completes. Inside its turn a step also holds the DuckDB file (core.warehouse), so
writers outside Prefect (the CLI, make build) and readers wait for it, and it for them.
The slot is leased and renewed while the step runs, so a long dbt build keeps it, and a killed
run's slot comes back when its lease (LEASE_SECONDS) expires. Postgres needs no turns for its
own sake (MVCC), but runs take them there too: two builds publishing marts at once still clash.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable
from typing import ParamSpec, TypeVar

from prefect.client.orchestration import get_client
from prefect.concurrency.sync import concurrency
from prefect.exceptions import ObjectAlreadyExists
from prefect.settings import PREFECT_API_URL

from core.settings import DEFAULT_ENVIRONMENT, environment
from core.warehouse import held_for_writing

P = ParamSpec("P")
R = TypeVar("R")


def warehouse_limit() -> str:
    """The environment's own limit: its warehouse is its own, so its writers take turns apart."""
    env = environment()
    return "elt-warehouse" if env == DEFAULT_ENVIRONMENT else f"elt-warehouse-{env}"


LEASE_SECONDS = 300
TURN_TAKEN = "warehouse turn taken"
TURN_RELEASED = "warehouse turn released"


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


def writes_to_warehouse(step: Callable[P, R]) -> Callable[P, R]:
    """Run `step` in a warehouse turn; its start and end are logged to the run (with the wait)."""

    @functools.wraps(step)
    def in_turn(*args: P.args, **kwargs: P.kwargs) -> R:
        ensure_warehouse_limit()
        asked = time.monotonic()
        with concurrency(
            warehouse_limit(), occupy=1, lease_duration=LEASE_SECONDS, strict=True, raise_on_lease_renewal_failure=False
        ):
            run_logger().info("%s after waiting %.1fs", TURN_TAKEN, time.monotonic() - asked)
            try:
                with held_for_writing():
                    return step(*args, **kwargs)
            finally:
                run_logger().info(TURN_RELEASED)

    return in_turn
