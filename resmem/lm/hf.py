"""Hugging Face causal language models as base models (`lm_experiments.<name>.models.<model>: {hf: ...}`): found
in the hub cache or a local `save_pretrained` folder, fetched once by the process that plans the workflow
(jobs never need network, as with the image models' pretrained weights), and their tokenizers for the corpus
(`corpus.tokenizer: model`). The model itself is loaded and wrapped by `resmem.lm.model.load_causal_lm`.

Any decoder-only model that `AutoModelForCausalLM` loads and that has an output layer works; GPT-2, GPT-NeoX
(Pythia) and Llama layouts are tested.
"""

from __future__ import annotations

import logging
import re
from functools import partial
from pathlib import Path

import numpy as np

from resmem.config import ConfigError
from resmem.io import fetch_or_explain, hub_files
from resmem.lm.tokenizers import join_documents

# The files a model needs, by what they are; a folder or cached snapshot missing one kind is incomplete.
WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)
TOKENIZER_FILES = ("tokenizer.json", "vocab.json", "tokenizer.model", "tokenizer_config.json")
# What a download fetches: configs and tokenizer files, and the weights in safetensors (.bin only where a repo
# has no safetensors); a hub repo's other formats (TF, Flax, ONNX, ...) are never needed.
TOKENIZER_PATTERNS = ("*.json", "*.txt", "*.model", "*.tiktoken")


def hf_models(config: dict) -> list[tuple[str, dict]]:
    """(config key path, model spec) of every Hugging Face language model of the config."""
    return [
        (f"lm_experiments.{name}.models.{model}", spec)
        for name, experiment in (config.get("lm_experiments") or {}).items()
        for model, spec in experiment["models"].items()
        if "hf" in spec
    ]


def require_transformers(what: str):
    """The transformers module, or a ConfigError saying how to install it for `what` (a config key)."""
    try:
        import transformers
    except ImportError:
        raise ConfigError(
            f'{what}: Hugging Face models need the optional transformers package: pip install -e ".[hf]"'
        ) from None
    return transformers


def tokenizer_source(spec: dict) -> str:
    """Where a model's tokenizer comes from: its `tokenizer` key, else the model itself."""
    return spec.get("tokenizer") or spec["hf"]


def source_label(source: str) -> str:
    """A hub name or a folder as a file-name part: EleutherAI/pythia-70m → EleutherAI--pythia-70m."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "--", source.strip("/")) or "model"


def _is_folder(source: str) -> bool:
    return Path(source).expanduser().is_dir()


def _cached(repo: str, revision: str | None, names) -> bool:
    from huggingface_hub import try_to_load_from_cache

    return any(isinstance(try_to_load_from_cache(repo, name, revision=revision), str) for name in names)


def locate(source: str, revision: str | None, needs=(WEIGHT_FILES, TOKENIZER_FILES)) -> tuple[Path, bool]:
    """(the folder the files are in or belong in, whether config.json and one file of each kind in `needs` are
    there) for a hub name or a local folder."""
    from huggingface_hub import constants

    if _is_folder(source):
        folder = Path(source).expanduser()
        found = all(any((folder / n).exists() for n in names) for names in (("config.json",), *needs))
        return folder, found
    found = all(_cached(source, revision, names) for names in (("config.json",), *needs))
    return Path(constants.HF_HUB_CACHE), found


def download(source: str, revision: str | None, weights: bool = True) -> None:
    """A hub repo's config and tokenizer files into the Hugging Face cache, and its weights unless not wanted."""
    from huggingface_hub import snapshot_download

    files = hub_files(source, revision)  # fails at once where the hub cannot be reached
    patterns = list(TOKENIZER_PATTERNS)
    if weights:
        patterns.append("*.safetensors" if any(f.endswith(".safetensors") for f in files) else "*.bin")
    snapshot_download(source, revision=revision, allow_patterns=patterns)


def fetch_missing(config: dict) -> None:
    """Fetch the Hugging Face models and tokenizers the config names and the cache lacks; without network (or
    for a local folder that lacks files), a ConfigError naming the model's key and the folder."""
    for at, spec in hf_models(config):
        require_transformers(f"invalid config at {at}.hf")
        wanted = [(spec["hf"], "hf", (WEIGHT_FILES,) if spec.get("tokenizer") else (WEIGHT_FILES, TOKENIZER_FILES))]
        if spec.get("tokenizer"):
            wanted.append((spec["tokenizer"], "tokenizer", (TOKENIZER_FILES,)))
        for source, key, needs in wanted:
            revision = spec.get("revision") if key == "hf" else None
            folder, found = locate(source, revision, needs)
            if found:
                continue
            if _is_folder(source):
                raise ConfigError(
                    f"invalid config at {at}.{key}: the folder {folder} lacks config.json, weights or tokenizer "
                    "files; write it with save_pretrained (model and tokenizer)"
                )
            fetch_or_explain(
                f"{at}.{key}",
                f"the Hugging Face model {source!r} is",
                folder,
                partial(download, source, revision, weights=WEIGHT_FILES in needs),
                f"Where there is network, run `python -m resmem.lm.hf CONFIG` (or `huggingface-cli download "
                f"{source}`) and copy {folder} here (or point HF_HOME at a copy), or give hf a local folder "
                "written by save_pretrained",
            )


class ModelTokenizer:
    """A model's own tokenizer (AutoTokenizer) for the corpus: documents joined by its EOS token."""

    def __init__(self, source: str):
        transformers = require_transformers("corpus.tokenizer: model")
        try:
            self._tok = transformers.AutoTokenizer.from_pretrained(
                source, local_files_only=True, trust_remote_code=False
            )
        except (OSError, ValueError) as exc:
            raise ConfigError(f"corpus.tokenizer: model: cannot load the tokenizer of {source!r} ({exc})") from exc
        self.source = source
        self.name = f"model:{source}"
        self.vocab_size = len(self._tok)
        eos = self._tok.eos_token
        self.separator = eos or "\n\n"
        # The separator is encoded on its own, so no merge ever spans a document boundary.
        self._sep_ids = [self._tok.eos_token_id] if eos else self._encode(["\n\n"])[0]

    def _encode(self, docs: list[str]) -> list[list[int]]:
        # add_special_tokens=False: no BOS in the middle of the corpus; no attention masks (a list an id).
        return self._tok(docs, add_special_tokens=False, return_attention_mask=False)["input_ids"]

    def encode_documents(self, docs: list[str]) -> np.ndarray:
        return join_documents(self._encode(docs), self._sep_ids)

    def decode(self, ids) -> str:
        return self._tok.decode([int(i) for i in ids])

    def provenance(self) -> dict:
        return {
            "tokenizer": self.name,
            "vocab_size": self.vocab_size,
            "separator": self.separator,
            "tokenizer_class": type(self._tok).__name__,
            "tokenizer_commit": getattr(self._tok, "_commit_hash", None) or self._tok.init_kwargs.get("_commit_hash"),
        }


if __name__ == "__main__":
    import sys

    from resmem.config import load

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    fetch_missing(load(sys.argv[1]))
