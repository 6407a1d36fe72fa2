"""What a run leaves in its directory and how it is read back: orbax checkpoints, the saved config
(record) and environment (provenance), checkpoint averaging, and the notebook bundle
(`xformer.load`)."""
