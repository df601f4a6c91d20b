"""Names of what the stages of every kind write: the contract between stages, the tests and users' own code.
Each kind's own artifacts are named in its package (`resmem.vision.artifacts`, `resmem.lm.artifacts`)."""

RESULTS = "results"  # the folder of every workflow artifact, relative to the working directory
SPLITS = ("train", "val", "test")
QUERY_SPLITS = ("val", "test")
# neighbors.npz: these, and `normalize` (whether the search normalized the vectors: what its readers recompute)
NEIGHBOR_KEYS = tuple(f"{split}_{kind}" for split in QUERY_SPLITS for kind in ("dist", "idx"))
# the image grid sweep (resmem.sweep): method base, resmem, knn or knn_interp; a method's unused parameters are empty
SWEEP_COLUMNS = ("method", "split", "k", "sigma", "temperature", "lam", "accuracy")
# Each method's summary columns <method>_<field> (`resmem.stages.gain_columns`): its test accuracy at the selected
# point, the gain over the base model with its paired 95 % interval and p-value (`resmem.stats.paired_gain`), the
# p-value Holm-adjusted over every run and gain of the experiment, the procedure, the best test accuracy on its grid
GAIN_FIELDS = ("test_acc", "gain", "gain_ci_low", "gain_ci_high", "p_value", "p_holm", "test", "best_test_acc")
