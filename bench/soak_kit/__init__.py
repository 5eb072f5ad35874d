"""The soak and chaos run (`bench/soak.py`, `tests/reliability/test_soak.py`): the local stack
under a steady load and random faults for minutes or hours, then an accounting of every sample
and request, and the slopes of every component's memory.

`stack` runs the pipeline as `gvloop up` does (one launcher that restarts what dies), `load`
the clients and their log, `chaos` the faults, `watch` what is sampled while it runs (memory,
descriptors, the served version, each checkpoint's commit record), `accounting` the
invariants checked at the end, `report` the tables, `run` the whole run.
"""
