"""Real data that ships inside registry packages (MT-Bench), for the demo, benchmarks and experiments."""
