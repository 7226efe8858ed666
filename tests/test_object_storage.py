"""Landing and the Iceberg lake on object storage: s3:// locations against a real S3-compatible
server on 127.0.0.1 (moto in server mode), read back with an independent client (boto3)."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator

import pytest

from lake.catalog import NAMESPACE, catalog
from lake.files import discover, state_dir
from loaders.pipelines import pipeline
from loaders.vehicles.generate import generate
from loaders.vehicles.warehouse_load import lake_pipeline, vehicles_lake
from spark_jobs.lake_commit import committed_files
from spark_jobs.vehicle_lake import run as run_lake_job

from .conftest import lay_out_as_site, real_csv_files, rows
from .processes import moto_server
from .vehicles_helpers import count_files, lake_rows

pytestmark = pytest.mark.integration
BUCKET = "elt-test"


@pytest.fixture
def s3(monkeypatch: pytest.MonkeyPatch) -> Iterator:
    """A moto S3 server on loopback with one bucket; the AWS variables point at it."""
    import boto3

    with moto_server() as endpoint:
        for name, value in {
            "AWS_ENDPOINT_URL": endpoint,
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_REGION": "us-east-1",
        }.items():
            monkeypatch.setenv(name, value)
        monkeypatch.delenv("AWS_PROFILE", raising=False)
        client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
        client.create_bucket(Bucket=BUCKET)
        yield client


def keys(client, prefix: str) -> list[str]:
    """Object keys under a prefix, leaving out the empty folder markers pyarrow writes."""
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix)
    return sorted(item["Key"] for page in pages for item in page.get("Contents", []) if not item["Key"].endswith("/"))


def test_landing_on_s3_archives_each_file_once_content_addressed(data_dir, s3, tmp_path, monkeypatch):
    from loaders.football_csv import football_csv
    from orchestration.maintenance import delete_old_landing_files

    monkeypatch.setenv("ELT_LANDING_DIR", f"s3://{BUCKET}/landing")
    real = next(p for p in real_csv_files() if p.name == "2425_E0.csv")
    site = lay_out_as_site([real], tmp_path / "site")
    load = lambda: pipeline("football_csv", "raw_football").run(  # noqa: E731
        football_csv(seasons=["2425"], divisions=["E0"], base_url=str(site))
    )
    load()
    digest = hashlib.sha256(real.read_bytes()).hexdigest()
    expected_key = f"landing/football_csv/2425/E0/{digest}.csv"
    assert keys(s3, "landing/") == [expected_key]
    assert s3.get_object(Bucket=BUCKET, Key=expected_key)["Body"].read() == real.read_bytes()
    assert rows("select landing_path from raw_football.source_files") == [(f"s3://{BUCKET}/{expected_key}",)]
    assert not (data_dir / "landing").exists()  # nothing went to the local disk instead

    load()  # unchanged: nothing archived twice
    assert keys(s3, "landing/") == [expected_key]
    assert delete_old_landing_files(retention_days=30) == []
    assert delete_old_landing_files(retention_days=-1) == [f"s3://{BUCKET}/{expected_key}"]
    assert keys(s3, "landing/") == []


@pytest.mark.parametrize("engine", ["spark", "duckdb"])
def test_the_lake_commits_to_s3_and_loads_into_the_warehouse(data_dir, s3, monkeypatch, engine):
    """Either lake engine writes locally (neither reaches S3 by itself offline) and the job uploads."""
    from orchestration.maintenance import remove_orphan_files

    monkeypatch.setenv("ICEBERG_WAREHOUSE", f"s3://{BUCKET}/lake")
    monkeypatch.setenv("LAKE_ENGINE", engine)
    manifest = generate(state_dir("incoming"), files=4, events_per_file=200, seed=17, quirks=True)
    discover()
    reports = {report.file_type: report for report in run_lake_job()}
    assert {report.engine for report in reports.values()} == {engine}

    events = catalog().load_table(f"{NAMESPACE}.vehicle_events")
    assert events.location().startswith(f"s3://{BUCKET}/lake/")
    assert events.metadata_location.startswith(f"s3://{BUCKET}/lake/")
    data_files = [task.file.file_path for task in events.scan().plan_files()]
    assert data_files and all(path.startswith(f"s3://{BUCKET}/lake/") for path in data_files)
    stored = set(keys(s3, "lake/"))
    assert {path.removeprefix(f"s3://{BUCKET}/") for path in data_files} <= stored
    assert not list((data_dir / "lake_staging").rglob("*.parquet"))  # staging emptied after upload
    assert len(lake_rows("vehicle_events")) == manifest.good["vehicles_events"]
    assert len(lake_rows("vehicle_status")) == manifest.good["vehicles_status"]
    assert committed_files(events) == set(reports["vehicles_events"].committed_files)
    accounted = sum(
        count_files(state_dir(s, t)) for s in ("processed", "failed") for t in ("vehicles_events", "vehicles_status")
    )
    assert accounted == len(set(manifest.files))

    lake_pipeline().run(vehicles_lake())
    assert rows("select count(*) from raw_vehicles.vehicle_events") == [(manifest.good["vehicles_events"],)]

    # An uploaded file that never got committed (a job killed before its commit) is an orphan.
    orphan = f"{events.location()}/data/batch_id=killed/day=2025-11-01/part-0.parquet"
    s3.put_object(Bucket=BUCKET, Key=orphan.removeprefix(f"s3://{BUCKET}/"), Body=b"PAR1")
    assert remove_orphan_files(events, min_age_hours=-1) == [orphan]
    assert {path.removeprefix(f"s3://{BUCKET}/") for path in data_files} <= set(keys(s3, "lake/"))
    assert len(lake_rows("vehicle_events")) == manifest.good["vehicles_events"]
