"""Scores Japanese VLMs on the community's benchmarks (see docs/evaluation.md)."""
