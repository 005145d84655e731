"""Runs the service: the real tritonserver on our model repository (`triton.TritonServer`), used by
`imem serve` (and so `make serve`), the integration tests and the benchmarks that start their own server."""
