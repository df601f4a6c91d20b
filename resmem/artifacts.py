"""Names of what the stages write: the contract between stages, the tests and users' own code."""

SPLITS = ("train", "val", "test")
QUERY_SPLITS = ("val", "test")
SPLIT_KEYS = tuple(f"{split}_idx" for split in SPLITS)
EMBEDDING_KEYS = tuple(f"{split}_{kind}" for split in SPLITS for kind in ("emb", "logits", "y"))
NEIGHBOUR_KEYS = tuple(f"{split}_{kind}" for split in QUERY_SPLITS for kind in ("dist", "idx"))
SWEEP_COLUMNS = ("split", "k", "sigma", "temperature", "accuracy")
SUMMARY_COLUMNS = (
    "experiment",
    "model",
    "train_fraction",
    "train_examples",
    "seed",
    "parameters",
    "base_test_acc",
    "k",
    "sigma",
    "temperature",
    "resmem_test_acc",
    "gain",
)
FIGURES = (
    "accuracy_vs_size",
    "accuracy_vs_k",
    "gain_heatmap",
    "gain_vs_train_fraction",
    "sensitivity",
    "gain_by_confidence",
)
CONFIDENCE_COLUMNS = ("bin_lo", "bin_hi", "count", "base_correct", "resmem_correct")
