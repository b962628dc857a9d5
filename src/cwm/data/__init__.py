"""Trace datasets: program sources (synth, harvest, corpus, evalsets), the builder, packing.

Nothing is imported here, so `cwm data --help` stays fast; import the module you need.
"""
