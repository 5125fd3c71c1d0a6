"""Helpers of the benchmark scripts in `benchmarks/` (no one runs these directly): the machine and the
reports (`common`), the synthetic pools of the speed benchmarks (`synthetic`), the official-style loop
they are compared with (`official_style`), and the quality tables' statistics and rows (`quality_stats`,
`quality_table`). A script imports them as `from lib.common import ...`: `python benchmarks/<script>.py`
puts `benchmarks/` on `sys.path`."""
