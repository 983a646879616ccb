"""Benchmark definitions shipped with evalkit (installed as `evalkit.benchmarks`)."""
