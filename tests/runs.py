"""The configs of the workflow runs the test session shares (fixtures in tests/conftest.py): one run per kind,
each holding the experiments of every test file that reads it."""

import yaml

from tests.conftest import write_config

# The folder run (tests/test_image_folders.py, tests/test_workflow.py): a ResNet-8 on the digits rendered as JPEGs,
# decoded once and streamed, beside the same recipe on the in-memory digits; timm models trained, and a ViT as built;
# a generated ImageFolder study with training fractions; a digits study over two seeds.
RECIPE = {"epochs": 6, "augment": "none", "lr": 0.01}  # 97 % test accuracy (the tests ask > 85 %)
TWO_SEEDS = {
    "dataset": {"name": "digits"},
    "models": {"cnn": {"arch": "small_cnn", "width": 2}},
    "seeds": [0, 1],
    "train": {"epochs": 2},
    "train_fractions": [1.0],
    "knn": {"k": [1, 2, 4], "sigma": [0.3, 1.0], "temperature": [1.0]},
}


def folder_config(workdir):
    """Writes the folder run's images and config under `workdir`; returns the config's path."""
    from tests.images import digits_jpeg_folders
    from tests.test_data import make_image_folders

    digits_jpeg_folders(workdir / "digit_jpegs", size=32, test_fraction=0.25, seed=0)
    make_image_folders(workdir / "images", per_class=(10, 4))

    def edit(config):
        common = {
            "models": {"resnet8": {"arch": "cifar_resnet", "depth": 8, "width_multiplier": 0.5}},
            "seeds": [0],
            "train": RECIPE,
            "train_fractions": [1.0],
            "knn": {"k": [1, 4, 16, 64], "sigma": [0.3, 1.0, 3.0], "temperature": [0.5, 1.0]},
        }
        folder = {"name": "imagefolder", "root": str(workdir / "digit_jpegs"), "image_size": 32}
        timm_models = {
            "test_resnet": {"arch": "timm", "name": "test_resnet"},  # timm's small CNN
            "vit": {
                "arch": "timm",
                "name": "vit_tiny_patch16_224",
                "img_size": 32,
                "patch_size": 8,
                "depth": 2,
                "embed_dim": 64,
                "num_heads": 2,
            },  # fmt: skip  (the model's own keys, passed through)
        }
        timm_common = {**common, "models": timm_models, "dataset": folder}
        config["experiments"] = {
            "timm": {**timm_common, "train": {"epochs": 12, "lr": 0.003, "augment": "none"}},
            "timm_frozen": {
                **timm_common,
                "models": {"vit": timm_models["vit"]},
                "train": {"epochs": 0},
                "knn": {"k": [1, 4], "sigma": [1.0]},
            },
            "folder": {**common, "dataset": folder},
            "folder_streamed": {**common, "dataset": {**folder, "cache": "none"}},
            "memory": {**common, "dataset": {"name": "digits", "test_fraction": 0.25, "split_seed": 0}},
            # A generated ImageFolder dataset with the training-fraction study (tests/test_workflow.py).
            "folders": {
                "dataset": {"name": "imagefolder", "root": str(workdir / "images"), "image_size": 8},
                "models": {"resnet8": {"arch": "cifar_resnet", "depth": 8, "width_multiplier": 0.25}},
                "train_fractions": [0.5, 1.0],
                "train": {"epochs": 2, "batch_size": 8, "num_workers": 0},
                "embed": {"batch_size": 16},
                "knn": {"k": [1, 2, 4], "sigma": [1.0], "temperature": [1.0]},
            },
            # The statistics over seeds (tests/test_workflow.py computes them by hand).
            "two_seeds": TWO_SEEDS,
        }
        del config["regression"]
        config["device"] = "cpu"  # on any machine: its tests recompute the runs' numbers on the CPU

    return write_config(workdir / "folders.yaml", edit)


# The language-model run (tests/test_lm_workflow.py, tests/test_hf_models.py): two tiny GPTs trained here on the
# standard library's bytes, and (where transformers is installed) three tiny Hugging Face models.
LM_SMOKE = {
    "corpus": {"name": "stdlib", "max_bytes": {"train": 40_000, "val": 6_000, "test": 6_000}},
    "models": {
        "gpt_l1_d16": {"n_layer": 1, "n_head": 2, "n_embd": 16},
        "gpt_l1_d32": {"n_layer": 1, "n_head": 2, "n_embd": 32},
    },
    "context": 32,
    "train": {"epochs": 1, "batch_size": 16, "lr": 0.003},
    "datastore": {"fractions": [0.5, 1.0], "max_tokens": 20_000},
    "eval_tokens": 1_000,
    "stats": {"block_positions": 32},  # 31 blocks of the 1,000 test positions
    "knn": {
        "k": [1, 4, 8],
        "sigma": [0.3, 3.0],
        "temperature": [1.0, 2.0],
        "lam": [0.0, 0.5],
        "tau": [1.0, 10.0],
    },
}


def lm_config(path, tiny_models=None):
    """Writes the language-model run's config to `path` (lm_smoke, and hf_tiny from `tiny_models` if given)."""
    experiments = {"lm_smoke": LM_SMOKE}
    if tiny_models is not None:
        from tests.hf_tiny import workflow_experiment

        experiments["hf_tiny"] = workflow_experiment(tiny_models)
    path.write_text(yaml.safe_dump({"device": "cpu", "lm_experiments": experiments}, sort_keys=False))
    return path
