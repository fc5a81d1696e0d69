"""The fault suite: `python -m tests.faults` (`make faults`) breaks real `elt` runs on purpose —
random SIGKILLs, the issue's named cases, a misbehaving API, PostgreSQL cutting a connection —
and checks from outside that nothing was lost, nothing stuck and nothing silent."""
