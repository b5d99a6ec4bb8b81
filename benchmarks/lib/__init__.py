"""Library code of the benchmarks: verifier presets, workload, compared methods, measurement, report, chart, the
results folder and the entry points' parsers."""

__all__: list[str] = []
