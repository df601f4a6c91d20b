"""Names of what the stages of an image experiment write."""

from resmem.artifacts import GAIN_FIELDS, SPLITS

SPLIT_KEYS = tuple(f"{split}_idx" for split in SPLITS)
# train_idx: the rows of the train pool that the model trained on and that form the datastore (train_rows.npz).
EMBEDDING_KEYS = ("train_idx", *(f"{split}_{kind}" for split in SPLITS for kind in ("emb", "logits", "y")))
# predictions.npz: per test example the label and the predicted class of the base model and of each method at its
# selected point (resmem.core.METHODS)
PREDICTION_KEYS = ("labels", "base", "resmem", "knn", "knn_interp")
# Per method m of resmem.core.METHODS: m_test_acc at its val-selected point, m_gain over the base model with its
# paired interval m_gain_ci_low/high, p-value m_p_value (and m_p_holm over the experiment) from the procedure
# m_test (resmem.stats.paired_gain), and m_best_test_acc, the best test accuracy anywhere on its grid.
# ResMem's point is k, sigma, temperature.
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
    "knn_k",
    "knn_sigma",
    "knn_interp_k",
    "knn_interp_sigma",
    "knn_interp_temperature",
    "knn_interp_lam",
    *(f"{m}_{column}" for m in ("resmem", "knn", "knn_interp") for column in GAIN_FIELDS),
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
