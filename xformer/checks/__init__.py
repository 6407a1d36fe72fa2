"""The self-check of a new machine (`python -m xformer.selfcheck`): the config's real train step
timed on a synthetic batch of its shape (step_timing), numerics on the device against
independent references (numerics), and the table and JSON of both (report)."""
