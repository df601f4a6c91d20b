"""Names of what the stages of every kind write: the contract between stages, the tests and users' own code.
Each kind's own artifacts are named in its package (`resmem.vision.artifacts`, `resmem.lm.artifacts`)."""

SPLITS = ("train", "val", "test")
QUERY_SPLITS = ("val", "test")
NEIGHBOR_KEYS = tuple(f"{split}_{kind}" for split in QUERY_SPLITS for kind in ("dist", "idx"))
SWEEP_COLUMNS = ("split", "k", "sigma", "temperature", "accuracy")  # the ResMem grid sweep (resmem.sweep)
