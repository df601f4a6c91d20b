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

# The language-model experiments (lm_experiments): a token datastore per model and seed, then per datastore
# fraction an index, one neighbour search and the sweep of base, ResMem and kNN-LM.
CORPUS_KEYS = tuple(f"{split}_tokens" for split in SPLITS)
DATASTORE_KEYS = (
    *(f"{split}_{kind}" for split in SPLITS for kind in ("keys", "next", "pos")),
    "head_weight",
    "head_bias",
)
LM_SWEEP_COLUMNS = ("method", "split", "k", "sigma", "temperature", "lam", "accuracy", "perplexity")
LM_SUMMARY_COLUMNS = (
    "experiment",
    "model",
    "datastore_fraction",
    "datastore_size",
    "seed",
    "parameters",
    "base_test_acc",
    "base_test_ppl",
    "resmem_k",
    "resmem_sigma",
    "resmem_temperature",
    "resmem_test_acc",
    "resmem_gain",
    "knnlm_k",
    "knnlm_sigma",
    "knnlm_lam",
    "knnlm_test_acc",
    "knnlm_gain",
    "knnlm_test_ppl",
)
LM_FIGURES = ("lm_accuracy_vs_size", "lm_gain_vs_datastore", "lm_sensitivity")
