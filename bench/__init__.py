"""Micro-benchmarks that run against real local servers (``make bench``)."""
