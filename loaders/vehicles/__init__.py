"""Vehicle telemetry loaders: the generator and the lake→warehouse dlt resource."""
