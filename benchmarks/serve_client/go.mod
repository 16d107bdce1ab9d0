module kiln.dev/benchmarks/serve_client

go 1.24.0
