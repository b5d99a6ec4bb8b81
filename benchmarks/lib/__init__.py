"""Library code of the benchmarks: verifier presets, workload, compared methods, measurement, report, chart."""

__all__: list[str] = []
