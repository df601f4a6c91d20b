"""Names of what the stages of a language-model experiment write: a token datastore per model and seed, then
per datastore fraction an index, one neighbor search and the sweep of base, ResMem and kNN-LM."""

from resmem.artifacts import GAIN_FIELDS, SPLITS

CORPUS_KEYS = tuple(f"{split}_tokens" for split in SPLITS)
DATASTORE_KEYS = (
    *(f"{split}_{kind}" for split in SPLITS for kind in ("keys", "next", "pos")),
    "head_weight",
    "head_bias",
)
# Written only where datastore.key is not final_hidden: the final hidden states beside the search keys.
DATASTORE_HIDDEN_KEYS = tuple(f"{split}_hidden" for split in SPLITS)
# kernel: l2 (weights softmax(−d/σ)) or squared_l2 (softmax(−d²/τ), kNN-LM as published); a row has σ or τ.
# loss: mean −log p(y) in nats (base, kNN-LM); perplexity = exp(loss).
LM_SWEEP_COLUMNS = (
    "method", "split", "k", "kernel", "sigma", "tau", "temperature", "lam", "accuracy", "loss", "perplexity",
)  # fmt: skip
LM_SUMMARY_COLUMNS = (
    "experiment",
    "model",
    "datastore_fraction",
    "datastore_size",
    "seed",
    "parameters",
    "datastore_key",
    "eval_stride",
    "base_test_acc",
    "base_test_ppl",
    "resmem_k",
    "resmem_sigma",
    "resmem_temperature",
    "resmem_test_acc",
    "resmem_gain",
    "knnlm_k",
    "knnlm_kernel",
    "knnlm_sigma",
    "knnlm_tau",
    "knnlm_lam",
    "knnlm_test_acc",
    "knnlm_gain",
    "knnlm_test_ppl",
    # the tests of each gain (resmem.stages.gain_columns: a t-test over the means of blocks of test positions)
    *(f"{m}_{c}" for m in ("resmem", "knnlm") for c in GAIN_FIELDS if c not in ("test_acc", "gain")),
    # mean −log p(y) of kNN-LM (at its point of lowest val perplexity) minus the base model's, in nats per token
    # (negative: better; the perplexity ratio is its exp), with its interval and p-value from the same block t
    *(f"knnlm_loss_change{c}" for c in ("", "_ci_low", "_ci_high", "_p_value", "_p_holm", "_test")),
)
# The methods a study may run on its neighbours (knn.methods); a study without resmem stores no final hidden
# states of the training positions
LM_METHODS = ("resmem", "knnlm")
# predictions.npz: per test position the next token, the predicted token of the base model, ResMem and kNN-LM
# at their selected points, and −log p(y) of the base model and of kNN-LM at its point of lowest val perplexity;
# a method's arrays only where knn.methods runs it
LM_PREDICTION_KEYS = ("labels", "base", "base_loss")
LM_METHOD_PREDICTION_KEYS = {"resmem": ("resmem",), "knnlm": ("knnlm", "knnlm_loss")}
LM_FIGURES = ("lm_accuracy_vs_size", "lm_gain_vs_datastore", "lm_sensitivity")
