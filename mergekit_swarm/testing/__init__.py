"""Builders of tiny, fully local models for tests, examples and benchmarks (no downloads).

Like `transformers.testing_utils`: shipped so that examples and benchmarks can import it, never
imported by the package itself.
"""
