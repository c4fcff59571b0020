"""The benchmark suite: ``make bench`` (``python -m bench``); see bench/README.md.

Every figure is measured against a named peer in the same run (the official Fish SDK, raw
Piper, the PCM size of the audio) and printed as a ratio with its goal. Benchmarks never
run as pass/fail tests.
"""
