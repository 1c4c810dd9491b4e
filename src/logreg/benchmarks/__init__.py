"""Benchmarks: the template against a hand-written loop, bare Lightning and a naive template; streaming."""
