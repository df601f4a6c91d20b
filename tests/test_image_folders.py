"""The workflow on a real image folder: the UCI digits rendered as 32-px RGB JPEGs in class folders, decoded once
into memory (dataset.cache auto) and streamed from the files (cache none), next to the same model on the
in-memory digits path (same test images, same recipe): the session's folder run (tests/conftest.py, its
config in tests/runs.py)."""

import json

import numpy as np
import pandas as pd
import pytest
import torch

from tests.images import plain_inputs


def test_folder_base_accuracy_matches_the_in_memory_path(folder_run):
    folder, memory = (folder_run["summaries"][name].iloc[0] for name in ("folder", "memory"))
    assert folder.base_test_acc > 0.85
    assert abs(folder.base_test_acc - memory.base_test_acc) <= 0.02


def test_resmem_on_the_folder_is_not_worse_than_the_base(folder_run):
    """Not worse, as far as the run's own 450 test images can tell: of the images only one of the two gets right,
    those only the base model gets right (c) exceed those only ResMem gets right (b) by at most twice the spread
    √(b + c) of such a split under no difference (McNemar's test at about 95 %), not by a fixed share."""
    row = folder_run["summaries"]["folder"].iloc[0]
    run = folder_run["workdir"] / "results" / "folder" / "resnet8" / "frac1" / "seed0"
    with np.load(run / "predictions.npz") as predictions:
        base, resmem = (predictions[m] == predictions["labels"] for m in ("base", "resmem"))
    b, c = int((resmem & ~base).sum()), int((base & ~resmem).sum())
    assert len(base) == 450 and row.resmem_gain == pytest.approx((b - c) / len(base), abs=1e-12)
    assert c - b <= 2 * np.sqrt(b + c), (b, c)


def test_folder_model_scores_the_same_on_plain_images(folder_run):
    """The checkpoint's accuracy on the plainly decoded test JPEGs equals the accuracy the workflow reports
    (its evaluation view is those images, not a zoomed crop of them)."""
    from resmem.vision.data import load_dataset
    from resmem.vision.stages import load_model

    run = folder_run["workdir"] / "results" / "folder" / "resnet8" / "frac1" / "seed0"
    model, _ = load_model(run / "model.pt")
    data = load_dataset({"name": "imagefolder", "root": str(folder_run["workdir"] / "digit_jpegs"), "image_size": 32})
    with torch.inference_mode():
        logits = model.eval()(plain_inputs(data.test, data.test.paths))
    plain_accuracy = float((logits.argmax(1).numpy() == data.test.labels).mean())
    reported = folder_run["summaries"]["folder"].iloc[0].base_test_acc
    assert plain_accuracy == pytest.approx(reported, abs=1e-9)
    with np.load(run / "embeddings.npz") as arrays:
        np.testing.assert_allclose(arrays["test_logits"], logits.numpy(), rtol=1e-4, atol=1e-4)


def test_decoded_and_streamed_folders_train_the_same_network(folder_run):
    """Decoding once changes where pixels come from, not which: with augment none the two paths give the same
    batches, so the same network, the same neighbors and the same table."""
    results = folder_run["workdir"] / "results"
    with np.load(results / "folder" / "images.npz") as decoded_file:
        assert decoded_file["train_images"].shape == (1347, 3, 32, 32) and len(decoded_file["test_images"]) == 450
    assert not (results / "folder_streamed" / "images.npz").exists()
    cached, streamed = (
        folder_run["summaries"][name].drop(columns="experiment") for name in ("folder", "folder_streamed")
    )
    pd.testing.assert_frame_equal(cached, streamed)


def test_timm_models_train_and_embed_consistently(folder_run):
    """A timm CNN and a small timm ViT (its own keys passed through) train on the folder; their embeddings'
    logits are the models' own outputs on the test images (features = pooled pre-logits, head = classifier)."""
    from resmem.vision.data import load_dataset
    from resmem.vision.stages import load_model

    summary = folder_run["summaries"]["timm"].set_index("model")
    assert summary.loc["test_resnet", "base_test_acc"] > 0.8 and summary.loc["vit", "base_test_acc"] > 0.45
    assert summary.loc["vit", "parameters"] < 200_000  # depth 2, width 64: the keys reached timm
    data = load_dataset({"name": "imagefolder", "root": str(folder_run["workdir"] / "digit_jpegs"), "image_size": 32})
    run = folder_run["workdir"] / "results" / "timm" / "vit" / "frac1" / "seed0"
    model, _ = load_model(run / "model.pt")
    with torch.inference_mode():
        logits = model.eval()(plain_inputs(data.test, data.test.paths[:64]))
    with np.load(run / "embeddings.npz") as arrays:
        np.testing.assert_allclose(arrays["test_logits"][:64], logits.numpy(), rtol=1e-4, atol=1e-4)


def test_epochs_zero_evaluates_the_network_as_built(folder_run):
    results = folder_run["workdir"] / "results" / "timm_frozen"
    summary = folder_run["summaries"]["timm_frozen"]
    assert (summary.epochs == 0).all() and not summary.pretrained.any()
    assert (summary.base_test_acc < 0.3).all()  # a random network: about chance (10 classes)
    assert summary.model.tolist() == ["vit"]
    train_log = pd.read_csv(results / "vit" / "frac1" / "seed0" / "train_log.csv")
    assert train_log.epoch.tolist() == [0] and np.isnan(train_log.loss[0])
    provenance = json.loads((results / "provenance.json").read_text())
    assert provenance["views"]["vit"] == "augment crop_flip at 32 px, evaluated on the whole image"
    text = (results / "summary.md").read_text()
    view = "augment crop_flip at 32 px, evaluated on the whole image"
    assert f"- vit: {view}; random initialization, not trained here (evaluated as loaded)" in text
