"""Running the pipeline: reports now; Prefect flows and schedules as they arrive."""
