"""Bad config values fail before any job runs, with a message naming the key and no traceback."""

import pytest
import yaml

from resmem.config import SCHEMA, ConfigError, load, validate
from resmem.vision.data import DATASETS
from resmem.vision.models import MODELS
from tests.conftest import REPO, snakemake, write_config


def smoke():
    return yaml.safe_load((REPO / "config" / "smoke.yaml").read_text())


def exp(config):
    return config["experiments"]["smoke"]


BAD = {
    "unknown key": (lambda c: exp(c).update(lerning_rate=0.1), "experiments.smoke", "'lerning_rate' was unexpected"),
    "k zero": (lambda c: exp(c)["knn"].update(k=[0, 2]), "experiments.smoke.knn.k[0]", "minimum of 1"),
    "k negative": (lambda c: exp(c)["knn"].update(k=[-3]), "experiments.smoke.knn.k[0]", "minimum of 1"),
    "sigma zero": (lambda c: exp(c)["knn"].update(sigma=[1.0, 0]), "experiments.smoke.knn.sigma[1]", "minimum of 0"),
    "temperature that float32 rounds to 0": (
        lambda c: exp(c)["knn"].update(temperature=[1.0, 1e-300]),
        "experiments.smoke.knn.temperature[1]",
        "1e-300 is less than the minimum of 1e-30",
    ),
    "empty grid": (
        lambda c: exp(c)["knn"].update(temperature=[]),
        "experiments.smoke.knn.temperature",
        "should be non-empty",
    ),
    "unknown model": (
        lambda c: exp(c)["models"]["cnn_w1"].update(arch="resnet9000"),
        "experiments.smoke.models.cnn_w1.arch",
        "'resnet9000' is not one of",
    ),
    "unknown dataset": (
        lambda c: exp(c)["dataset"].update(name="mnist"),
        "experiments.smoke.dataset.name",
        "'mnist' is not one of",
    ),
    "string for number": (lambda c: exp(c)["train"].update(lr="1e-3"), "experiments.smoke.train.lr", "write 1.0e-3"),
    "val fraction 0": (
        lambda c: exp(c)["dataset"].update(val_fraction=0),
        "experiments.smoke.dataset.val_fraction",
        "minimum of 0",
    ),
    "val fraction 1.5": (
        lambda c: exp(c)["dataset"].update(val_fraction=1.5),
        "experiments.smoke.dataset.val_fraction",
        "maximum of 1",
    ),
    "bad device": (lambda c: c.update(device="tpu"), "device", "'tpu' is not one of"),
    "trailing newline": (
        lambda c: c.update(experiments={"smoke\n": exp(c)}),
        "experiments",
        "'smoke\\n' does not match",
    ),
    "name too long": (lambda c: c.update(experiments={"x" * 65: exp(c)}), "experiments", "1-64 letters, digits"),
    "names differing in case": (
        lambda c: c.update(regression={"Smoke": c["regression"]["smoke_regression"]}),
        "regression.Smoke",
        "the name is also used (regardless of case) in experiments.smoke",
    ),
    "models differing in case": (
        lambda c: exp(c)["models"].update(CNN_W1={"arch": "small_cnn"}),
        "experiments.smoke.models.CNN_W1",
        "differs only in case from cnn_w1",
    ),
    "model named like a summary file": (
        lambda c: exp(c)["models"].update({"summary.csv": {"arch": "small_cnn"}}),
        "experiments.smoke.models.summary.csv",
        "the name is taken by results/smoke/summary.csv",
    ),
    "embeddings model named like a summary file": (
        lambda c: c["experiments"].update(mine={"embeddings": {"summary.md": {"path": "x.npz", "parameters": 10}}}),
        "experiments.mine.embeddings.summary.md",
        "the name is taken by results/mine/summary.md",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_config_names_the_key(case):
    edit, key, problem = BAD[case]
    config = smoke()
    edit(config)
    with pytest.raises(ConfigError) as info:
        validate(config)
    message = str(info.value)
    assert f"invalid config at {key}:" in message
    assert problem in message


def test_workflow_rejects_bad_config_before_any_job(tmp_path):
    """The user's path, once: snakemake on a bad config stops before any job, naming the key without a traceback
    (the Snakefile validates with `validate`, whose message for every case test_bad_config_names_the_key checks)."""
    edit, key, problem = BAD["k zero"]
    config = write_config(tmp_path / "bad.yaml", edit)
    proc = snakemake(tmp_path, configfile=config, check=False)
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert f"invalid config at {key}:" in output and problem in output
    assert "Traceback" not in output
    assert not (tmp_path / "results").exists()


def test_defaults_fill_every_key():
    config = {"experiments": {"x": {"models": {"m": {"arch": "small_cnn"}}}}}
    validate(config)
    x = config["experiments"]["x"]
    assert config["device"] == "auto"
    assert x["knn"]["normalize"] is False and x["models"]["m"]["width"] == 8 and x["seeds"] == [0]
    assert x["dataset"] == {
        "name": "digits",
        "root": "data",
        "download": False,
        "image_size": 224,
        "cache": "auto",
        "cache_mb": 4096,
        "subsample": {"train": None, "test": None},
        "test_fraction": 0.25,
        "val_fraction": 0.2,
        "split_seed": 0,
    }
    assert x["train_fractions"] == [1.0] and x["train"]["schedule"] == "cosine" and x["train"]["amp"] is True
    resnet = {"experiments": {"x": {"models": {"r": {"arch": "cifar_resnet"}}}}}
    assert validate(resnet)["experiments"]["x"]["models"]["r"] == {
        "arch": "cifar_resnet",
        "depth": 20,
        "width_multiplier": 1.0,
    }


def test_every_schema_key_has_a_description_and_a_default():
    schema = yaml.safe_load(SCHEMA.read_text())
    missing = []
    exactly_one = {"config.experiments.*.models", "config.experiments.*.embeddings"}  # config.check_semantics

    def walk(node, path):
        for key, sub in node.get("properties", {}).items():
            if not sub:  # `arch: {}` inside an architecture's `then`: described where it is defined
                continue
            sub = schema["$defs"][sub["$ref"].rsplit("/", 1)[-1]] | sub if "$ref" in sub else sub
            if "description" not in sub:
                missing.append(f"{path}.{key}: description")
            if "default" not in sub and key not in node.get("required", []) and f"{path}.{key}" not in exactly_one:
                missing.append(f"{path}.{key}: default")
            walk(sub, f"{path}.{key}")
        for case in node.get("allOf", []):  # per-architecture keys of a model
            walk(case["then"], f"{path}<{case['if']['properties']['arch']}>")
        extra = node.get("additionalProperties")
        if isinstance(extra, dict):
            walk(schema["$defs"][extra["$ref"].rsplit("/", 1)[-1]] if "$ref" in extra else extra, f"{path}.*")

    walk(schema, "config")
    assert not missing


def test_schema_enums_match_the_registries():
    schema = yaml.safe_load(SCHEMA.read_text())
    experiment = schema["$defs"]["experiment"]["properties"]
    assert schema["$defs"]["model"]["properties"]["arch"]["enum"] == sorted(MODELS)
    assert experiment["dataset"]["properties"]["name"]["enum"] == list(DATASETS)


def test_shipped_configs_are_valid():
    for path in sorted((REPO / "config").glob("**/*.yaml")):
        load(path)


def test_every_key_is_documented_in_the_configuration_reference():
    readme = (REPO / "docs" / "configuration.md").read_text()
    schema = yaml.safe_load(SCHEMA.read_text())
    keys = set()

    def collect(node):
        if isinstance(node, dict):
            keys.update(node.get("properties", {}))
            for value in node.values():
                collect(value)
        elif isinstance(node, list):
            for value in node:
                collect(value)

    collect(schema)
    undocumented = sorted(k for k in keys if f"`{k}`" not in readme)
    assert not undocumented


def test_unreadable_config_file_is_named(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("experiments: [unclosed\n")
    with pytest.raises(ConfigError, match="broken.yaml: cannot read the config"):
        load(path)


def test_a_k_above_a_runs_rows_stops_planning_before_any_memory_request(tmp_path):
    """k = 10¹⁹ once asked SLURM for 6·10¹⁶ MB before the index job's own check; now planning names the key
    (the smoke run's smallest training fraction indexes 539 rows)."""
    config = write_config(tmp_path / "c.yaml", lambda c: exp(c)["knn"].update(k=[1, 10**19]))
    proc = snakemake(tmp_path, "--dry-run", configfile=config, check=False)
    assert proc.returncode != 0
    assert ("config key knn.k: the largest k (10,000,000,000,000,000,000) exceeds the 539 rows this run's datastore "
            "indexes; lower it") in proc.stderr + proc.stdout  # fmt: skip
    assert "Traceback" not in proc.stderr and "mem_mb" not in proc.stderr
