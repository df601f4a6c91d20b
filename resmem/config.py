"""Config validation against the schema shipped inside the package (resmem/config.schema.yaml), with messages
that name the key. The workflow validates with this same file."""

from __future__ import annotations

from pathlib import Path

import yaml

SCHEMA = Path(__file__).resolve().parent / "config.schema.yaml"


class ConfigError(ValueError):
    """The config is invalid; the message names the key and says what to do."""


def key_path(path) -> str:
    """experiments.digits.knn.k[0] from a jsonschema error path."""
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "<top level>"


def _description(root: dict, schema_path) -> str:
    """The description of the innermost schema along the error's schema path that has one ($refs followed)."""
    node, found = root, root.get("description", "")
    for part in schema_path:
        while isinstance(node, dict) and "$ref" in node and part not in node:
            node = root["$defs"][node["$ref"].rsplit("/", 1)[-1]]
            found = node.get("description", found)
        if part == "$ref":
            node = root["$defs"][node["$ref"].rsplit("/", 1)[-1]]
            found = node.get("description", found)
            continue
        try:
            node = node[part]
        except (KeyError, IndexError, TypeError):
            break
        if isinstance(node, dict) and "description" in node:
            found = node["description"]
    return found


def explain(error, schema: dict) -> str:
    """One readable line for a jsonschema ValidationError: the key, the problem, the key's description."""
    key = key_path(error.absolute_path)
    hint = _description(schema, error.absolute_schema_path)
    missing = (
        [name for name in error.validator_value if name not in error.instance] if error.validator == "required" else []
    )
    if missing:  # named as the key it is, with its own description
        key = key_path([*error.absolute_path, missing[0]])
        hint = _description(schema, [*list(error.absolute_schema_path)[:-1], "properties", missing[0]]) or hint
    if error.validator == "type" and isinstance(error.instance, str) and error.validator_value in ("number", "integer"):
        hint = f"{hint} YAML reads 1e-3 as a string: write 1.0e-3." if "e" in error.instance.lower() else hint
    message = f"invalid config at {key}: {error.message}"
    return f"{message}. {hint}".strip() if hint else message


def validate(config: dict, schema_path=SCHEMA) -> dict:
    """Validate in place (filling defaults) with Snakemake's own validator; raise ConfigError naming the key."""
    import jsonschema
    from snakemake.exceptions import WorkflowError
    from snakemake.utils import validate as snakemake_validate

    given = split_path_fractions(config)  # before the schema fills in the defaults
    try:
        snakemake_validate(config, str(schema_path))
    except WorkflowError as exc:
        error = exc.__context__
        if not isinstance(error, jsonschema.ValidationError):
            raise
        schema = yaml.safe_load(Path(schema_path).read_text())
        raise ConfigError(explain(_deepest(error), schema)) from None
    fill_kind_defaults(config)
    drop_split_path_fractions(config, given)
    check_semantics(config)
    return config


CORPUS_FRACTIONS = ("val_fraction", "test_fraction")


def split_path_fractions(config) -> dict[str, list[str]]:
    """{language-model experiment: the corpus fractions its config sets} for each corpus with per-split paths
    (corpus.path = {train, val, test}), read from the config as written (not yet validated)."""
    experiments = config.get("lm_experiments") if isinstance(config, dict) else None
    out = {}
    for name, experiment in experiments.items() if isinstance(experiments, dict) else ():
        corpus = experiment.get("corpus") if isinstance(experiment, dict) else None
        if isinstance(corpus, dict) and isinstance(corpus.get("path"), dict):
            out[name] = [key for key in CORPUS_FRACTIONS if key in corpus]
    return out


def drop_split_path_fractions(config: dict, given: dict[str, list[str]]) -> None:
    """A corpus with per-split paths has nothing to split by fraction: a fraction set beside them is an error, and
    the defaults the schema filled in are removed (so that no corpus.json claims a split it did not make)."""
    for name, keys in given.items():
        if keys:
            raise ConfigError(
                f"invalid config at lm_experiments.{name}.corpus.{keys[0]}: corpus.path gives the train, val and "
                f"test splits their own files, so there is nothing to split by {keys[0]}; remove it (or give path "
                "as one file or folder to split)"
            )
        for key in CORPUS_FRACTIONS:
            config["lm_experiments"][name]["corpus"].pop(key, None)


# knn.lam's default differs by kind: images' knn_interp needs λ > 0 (λ = 0 is the base model); kNN-LM's grid
# includes the base model, as knn-transformers' studies do.
DEFAULT_LAMBDAS = {"experiments": [0.1, 0.25, 0.5, 0.75, 0.9], "lm_experiments": [0.0, 0.1, 0.25, 0.5, 0.75]}


def fill_kind_defaults(config: dict) -> None:
    """The defaults a schema cannot give because they depend on the experiment's kind (null in the schema)."""
    for kind, lambdas in DEFAULT_LAMBDAS.items():
        for experiment in (config.get(kind) or {}).values():
            if experiment["knn"]["lam"] is None:
                experiment["knn"]["lam"] = list(lambdas)


# Top-level sections that hold named experiments, each kind with its own rules and outputs.
EXPERIMENT_KINDS = ("experiments", "lm_experiments", "regression")


def experiment_names(config: dict, kind: str) -> list[str]:
    return list(config.get(kind) or {})


# What an experiment's folder (results/<experiment>/) holds beside its models' folders
RESERVED_MODEL_NAMES = ("benchmarks", "corpus", "figures", "images.npz", "logs", "provenance.json", "risk.csv",
                        "split.npz", "summary.csv", "summary.md", "summary.tex")  # fmt: skip


def check_names(config: dict) -> None:
    """Experiment names are unique across kinds and model names within their experiment, regardless of case (a
    case-insensitive filesystem would merge their folders); no model is named like an experiment-level file."""
    seen: dict[str, str] = {}
    for kind in EXPERIMENT_KINDS:
        for name in experiment_names(config, kind):
            if name.casefold() in seen:
                raise ConfigError(
                    f"invalid config at {kind}.{name}: the name is also used (regardless of case) in "
                    f"{seen[name.casefold()]}; every experiment needs its own name (it becomes results/<name>/)"
                )
            seen[name.casefold()] = f"{kind}.{name}"
            models: dict[str, str] = {}
            # each model becomes results/<name>/<model>/: the trained ones, or else the embeddings files'
            section = "models" if config[kind][name].get("models") else "embeddings"
            for model in config[kind][name].get(section) or {}:
                at = f"invalid config at {kind}.{name}.{section}.{model}"
                if model.casefold() in RESERVED_MODEL_NAMES:
                    raise ConfigError(f"{at}: the name is taken by results/{name}/{model.lower()}; rename the model")
                if model.casefold() in models:
                    raise ConfigError(f"{at}: differs only in case from {models[model.casefold()]}; rename one")
                models[model.casefold()] = model


def check_semantics(config: dict) -> None:
    """What a JSON schema cannot say."""
    check_names(config)
    seen = [name for kind in EXPERIMENT_KINDS for name in experiment_names(config, kind)]
    if not seen:
        raise ConfigError(
            f"invalid config at <top level>: no experiment; name at least one under {', '.join(EXPERIMENT_KINDS)}"
        )
    for name, experiment in config["experiments"].items():
        if ("models" in experiment) == ("embeddings" in experiment):
            raise ConfigError(
                f"invalid config at experiments.{name}: give models (trained here) or embeddings (computed "
                "elsewhere), exactly one of them"
            )
        check_image_cache(f"experiments.{name}", experiment["dataset"]["cache"], experiment["train"]["augment"])
        if experiment["knn"]["methods"] != ["resmem", "knnlm"]:
            raise ConfigError(
                f"invalid config at experiments.{name}.knn.methods: only language-model studies choose their methods; "
                "image studies always run resmem and the knn and knn_interp baselines (remove it)"
            )
        if "embeddings" in experiment:
            for key, default in (("train_fractions", [1.0]), ("seeds", [0])):
                if experiment[key] != default:
                    raise ConfigError(
                        f"invalid config at experiments.{name}.{key}: embeddings computed elsewhere have no "
                        f"{key.replace('_', ' ')} to vary (one run per file); remove it"
                    )
        for model, spec in experiment.get("models", {}).items():
            depth = spec.get("depth")
            if depth is not None and (depth - 2) % 6:
                raise ConfigError(
                    f"invalid config at experiments.{name}.models.{model}.depth: {depth} is not 6n+2; "
                    "use 8, 14, 20, 32, 44, 56 or 110"
                )
    for name, experiment in (config.get("lm_experiments") or {}).items():
        _check_lm(f"lm_experiments.{name}", experiment)


# The folders a dataset's root must hold: class folders per split (torchvision's ImageNet layout: train, val)
DATASET_FOLDERS = {"imagefolder": ("train", "test"), "imagenet": ("train", "val")}


def check_input_paths(config: dict) -> None:
    """Every file and folder the config reads exists: checked where the workflow is planned (not in dry runs,
    which plan without data), before any job, so that a cluster run fails now rather than after queueing."""
    for name, experiment in (config.get("experiments") or {}).items():
        dataset, at = experiment["dataset"], f"invalid config at experiments.{name}.dataset.root"
        root = Path(dataset.get("root", "data"))
        folders = [root / folder for folder in DATASET_FOLDERS.get(dataset["name"], ())]
        for folder in folders:
            if not folder.is_dir():
                needed = " and ".join(map(str, folders))
                raise ConfigError(
                    f"{at}: {folder} is not a folder; {dataset['name']} needs class folders under {needed}"
                )
        cifar = [root / "cifar-100-python" / "train", root / "cifar-100-python.tar.gz"]
        if dataset["name"] == "cifar100" and not dataset.get("download") and not any(p.exists() for p in cifar):
            raise ConfigError(f"{at}: neither {cifar[1]} nor its extracted folder is there; put the archive there "
                              "or set dataset.download: true")  # fmt: skip
    for name, experiment in (config.get("lm_experiments") or {}).items():
        corpus = experiment["corpus"]
        paths = corpus["path"] if isinstance(corpus.get("path"), dict) else {}
        for split, path in paths.items():
            if not Path(path).expanduser().exists():
                raise ConfigError(
                    f"invalid config at lm_experiments.{name}.corpus.path.{split}: {path} does not exist; point it "
                    f"at the {split} split's UTF-8 file or folder"
                )
        for key in ("tokenizer_file",) if paths else ("path", "tokenizer_file"):
            if corpus.get(key) and not Path(corpus[key]).exists():
                raise ConfigError(f"invalid config at lm_experiments.{name}.corpus.{key}: {corpus[key]} does not exist")


def check_image_cache(at: str, cache: str, augment: str) -> None:
    """Images decoded into memory at image_size cannot be cropped from the full image: `at` names the experiment
    (checked here for an explicit augment, by the decode stage for what `auto` means for its dataset)."""
    if cache == "memory" and augment == "resized_crop_flip":
        raise ConfigError(
            f"invalid config at {at}.dataset.cache: memory keeps the images at image_size, but train.augment "
            "(resized_crop_flip) crops the full images; set dataset.cache to auto or none, or train.augment to "
            "flip or crop_flip"
        )


def _check_lm(at: str, experiment: dict) -> None:
    corpus, knn = experiment["corpus"], experiment["knn"]
    if corpus["name"] == "text" and not corpus["path"]:
        raise ConfigError(f"invalid config at {at}.corpus.path: the text corpus needs a file or folder; set path")
    if corpus["name"] != "text" and corpus["path"]:
        raise ConfigError(
            f"invalid config at {at}.corpus.path: only the text corpus reads a path (name is {corpus['name']}); "
            "remove path or set name: text"
        )
    if corpus["tokenizer"] == "bpe" and not corpus["tokenizer_file"]:
        raise ConfigError(
            f"invalid config at {at}.corpus.tokenizer_file: the bpe tokenizer needs a tokenizers JSON file; set it "
            "or use tokenizer: bytes"
        )
    hf = [model for model, spec in experiment["models"].items() if "hf" in spec]
    own = [model for model in experiment["models"] if model not in hf]
    if corpus["tokenizer"] == "model" and own:
        raise ConfigError(
            f"invalid config at {at}.corpus.tokenizer: model tokenizes with each Hugging Face model's tokenizer, "
            f"but {own[0]} is trained here; give it hf, or use tokenizer bytes or bpe"
        )
    if hf and corpus["tokenizer"] != "model":
        raise ConfigError(
            f"invalid config at {at}.corpus.tokenizer: the Hugging Face model {hf[0]} reads its own tokenizer's ids; "
            "set corpus.tokenizer: model"
        )
    stride = experiment["eval_stride"]
    if stride is not None and stride > experiment["context"]:
        raise ConfigError(
            f"invalid config at {at}.eval_stride: {stride} new tokens per window exceed context = "
            f"{experiment['context']}; tokens would go unscored"
        )
    too_large = [k for k in knn["resmem_k"] or () if k > max(knn["k"])]
    if too_large:
        raise ConfigError(
            f"invalid config at {at}.knn.resmem_k: {too_large} exceed the largest k ({max(knn['k'])}) that the one "
            "neighbour search finds; lower them or raise knn.k"
        )
    for model in own:
        spec = experiment["models"][model]
        if spec["n_embd"] % spec["n_head"]:
            raise ConfigError(
                f"invalid config at {at}.models.{model}.n_head: {spec['n_head']} heads do not divide "
                f"n_embd = {spec['n_embd']}"
            )
        if knn["index"] == "ivfpq" and spec["n_embd"] % knn["pq_m"]:
            raise ConfigError(
                f"invalid config at {at}.knn.pq_m: {knn['pq_m']} codes do not divide the key dimension "
                f"n_embd = {spec['n_embd']} of model {model}"
            )


def _deepest(error):
    """For anyOf/oneOf failures jsonschema reports the parent; the most specific sub-error names the key."""
    while error.context:
        error = max(error.context, key=lambda e: len(e.absolute_path))
    return error


def load(path) -> dict:
    """Read a YAML config file and validate it (defaults filled)."""
    path = Path(path)
    try:
        config = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"{path}: cannot read the config ({exc})") from None
    return validate(config)
