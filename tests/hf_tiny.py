"""Tiny Hugging Face causal LMs for tests, offline: a GPT-2, a GPT-NeoX and a Llama built from configs (random
weights, seed 0) and saved with save_pretrained beside a byte-level BPE tokenizer trained here on real text
(argparse's source). tests/conftest.py builds them once a session (fixture tiny_models)."""

import sysconfig
from pathlib import Path

from resmem.config import validate

CONTEXT = 24
WIDTH = 32
TEXT = Path(sysconfig.get_paths()["stdlib"]) / "argparse.py"  # real text with real structure, offline
EOS = "<|endoftext|>"
CLASSES = {"gpt2": "GPT2LMHeadModel", "neox": "GPTNeoXForCausalLM", "llama": "LlamaForCausalLM"}


def tokenizer_on_text(folder: Path):
    """A byte-level BPE tokenizer (GPT-2's kind) trained on the corpus text, saved as a transformers tokenizer."""
    import transformers
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400, special_tokens=[EOS], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(TEXT.read_text().splitlines(keepends=True), trainer)
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS)
    fast.save_pretrained(folder)
    return fast


def tiny_config(kind: str, vocab: int):
    import transformers

    common = dict(vocab_size=vocab, bos_token_id=0, eos_token_id=0)
    if kind == "gpt2":
        return transformers.GPT2Config(n_layer=2, n_embd=WIDTH, n_head=2, n_positions=64, **common)
    if kind == "neox":
        return transformers.GPTNeoXConfig(num_hidden_layers=2, hidden_size=WIDTH, num_attention_heads=2,
                                          intermediate_size=64, max_position_embeddings=64, **common)  # fmt: skip
    return transformers.LlamaConfig(num_hidden_layers=2, hidden_size=WIDTH, num_attention_heads=2,
                                    num_key_value_heads=1, intermediate_size=64, max_position_embeddings=64,
                                    **common)  # fmt: skip


def build_tiny_models(root: Path) -> dict:
    """{kind: folder} of tiny models (random weights, seed 0), each saved with its tokenizer under `root`."""
    import torch
    import transformers

    folders = {}
    for kind, cls in CLASSES.items():
        folder = root / f"tiny_{kind}"
        tokenizer = tokenizer_on_text(folder)
        torch.manual_seed(0)
        getattr(transformers, cls)(tiny_config(kind, len(tokenizer))).save_pretrained(folder)
        folders[kind] = folder
    return folders


def experiment(models: dict, **extra) -> dict:
    """A validated lm experiment over argparse's source (split by line ranges) with the Hugging Face `models`."""
    corpus = {"name": "text", "path": str(TEXT), "tokenizer": "model", "val_fraction": 0.1, "test_fraction": 0.1}
    cfg = {"corpus": corpus, "models": models, "context": CONTEXT, **extra}
    return validate({"lm_experiments": {"x": cfg}})["lm_experiments"]["x"]


def workflow_experiment(tiny_models: dict) -> dict:
    """The three tiny models as one lm experiment of the workflow (tests/test_hf_models.py checks its results):
    kNN-LM's key, strided evaluation, the whole datastore (lm_smoke has two fractions), a small grid."""
    models = {
        "gpt2": {"hf": str(tiny_models["gpt2"])},
        # NeoX reads GPT-2's tokenizer folder (the same vocabulary), so the two share one tokenized corpus.
        "neox": {"hf": str(tiny_models["neox"]), "tokenizer": str(tiny_models["gpt2"])},
        "llama": {"hf": str(tiny_models["llama"])},
    }
    cfg = experiment(models, eval_stride=12, eval_tokens=400)
    cfg["datastore"].update(key="last_ffn_input", fractions=[1.0])
    cfg["knn"].update(k=[1, 4], sigma=[1.0], temperature=[1.0], lam=[0.0, 0.25], tau=[1.0])
    return cfg
