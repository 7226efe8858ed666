"""Vehicle telemetry: registry, file lifecycle, generator, Iceberg lake and lake→warehouse load."""
