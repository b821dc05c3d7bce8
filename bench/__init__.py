"""Benchmarks and drills that run a whole sessionmesh as real OS processes."""
