"""The Iceberg lake: its catalog, the file-type registry and the lifecycle of vehicle files.

Shared by the Spark job that writes the lake, the dlt load that reads it, the query REPL and
maintenance. The write path itself (tables, Parquet, commits) belongs to spark_jobs.
"""
