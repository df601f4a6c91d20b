"""Names of what the stages of an image experiment write."""

from resmem.artifacts import SPLITS

SPLIT_KEYS = tuple(f"{split}_idx" for split in SPLITS)
# train_idx: the rows of the train pool that the model trained on and that form the datastore (train_rows.npz).
EMBEDDING_KEYS = ("train_idx", *(f"{split}_{kind}" for split in SPLITS for kind in ("emb", "logits", "y")))
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
    "epochs",  # 0: evaluated as loaded, not trained here
    "pretrained",
    "view",  # the augmentation trained with and the view evaluated on
)
FIGURES = (
    "accuracy_vs_size",
    "accuracy_vs_k",
    "gain_heatmap",
    "gain_vs_train_fraction",
    "sensitivity",
    "gain_by_confidence",
)
