"""fastui benchmarks: ``python -m bench.kernels`` (fused loss kernels); step and data benchmarks join later.

Every result is a CSV row with provenance (bench/common.py): device, versions, git SHA, date, p20/p50/p80.
"""
