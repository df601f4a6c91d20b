"""Hugging Face causal LMs as base models, offline: a tiny GPT-2, GPT-NeoX and Llama built from configs and
saved with save_pretrained beside a BPE tokenizer trained here on real text (argparse's source), run
through the stages and the whole workflow; keys checked against the models' own activations, strided
perplexity against transformers' own loss, memorization at k = 1."""

import json
import logging
import sys

import faiss
import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from resmem.config import ConfigError, validate
from resmem.engine import sweep_correct
from resmem.lm import hf
from resmem.lm import stages as lm_stages
from resmem.lm.model import sliding_windows
from resmem.lm.sizes import hf_shape
from resmem.lm.tokens import KeyLogits, base_predict, final_hidden
from tests.conftest import snakemake
from tests.hf_tiny import CLASSES, CONTEXT, WIDTH, experiment

transformers = pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")


def stage_run(tmp_path, folder, key="final_hidden", eval_stride=None, eval_tokens=100_000):
    """corpus → train (epochs 0) → datastore by the stage functions; returns the datastore's arrays, the corpus
    tokens and the loaded model."""
    cfg = experiment({"m": {"hf": str(folder)}}, eval_stride=eval_stride)
    lm_stages.corpus(tmp_path / "c.npz", tmp_path / "c.json", cfg["corpus"], str(folder))
    out = {"model": tmp_path / "model.pt", "train_log": tmp_path / "log.csv", "meta": tmp_path / "meta.json"}
    lm_stages.train(tmp_path / "c.npz", tmp_path / "c.json", out, cfg["models"]["m"], cfg["train"], CONTEXT, 500,
                    seed=0, device="cpu", threads=1, config={})  # fmt: skip
    store = {**cfg["datastore"], "key": key}
    lm_stages.datastore(tmp_path / "c.npz", out["model"], tmp_path / "ds.npz", tmp_path / "ds.json", store,
                        eval_tokens, eval_stride, False, "cpu", threads=1)  # fmt: skip
    model, _ = lm_stages.load_lm(out["model"])
    return lm_stages.load_datastore(tmp_path / "ds.npz"), lm_stages.load_tokens(tmp_path / "c.npz"), model


@pytest.mark.parametrize("kind", list(CLASSES))
def test_keys_are_the_models_own_activations(tiny_models, tmp_path, kind):
    arrays, tokens, model = stage_run(tmp_path, tiny_models[kind], key="last_ffn_input", eval_stride=8)
    network = model.model
    # Not copied: epochs 0 keeps the weights where they are, and the model file says where.
    saved = torch.load(tmp_path / "model.pt", weights_only=False)
    assert saved["state_dict"] is None and saved["meta"]["model"]["hf"] == str(tiny_models[kind])
    layer_norm = {"gpt2": "ln_2", "neox": "post_attention_layernorm", "llama": "post_attention_layernorm"}[kind]
    last_layer = model.decoder_layers()[-1]
    captured = {}
    handle = getattr(last_layer, layer_norm).register_forward_hook(lambda m, a, out: captured.update(norm=out))
    windows = sliding_windows(len(tokens["test"]), CONTEXT, 8)
    rows = np.array([0, 1, 7, 8, 30, len(arrays["test_pos"]) - 1])
    try:
        for row in rows:
            p = int(arrays["test_pos"][row])
            start = int(windows.starts[windows.of(np.array([p]))[0]])
            ids = torch.from_numpy(tokens["test"][start : p + 1].astype(np.int64))[None]
            with torch.inference_mode():
                logits = network(ids).logits[0, -1].numpy()
            # The final hidden state times the output layer gives the model's own logits.
            ours = KeyLogits(final_hidden(arrays, "test"), arrays["head_weight"], arrays["head_bias"])[[row]][0]
            np.testing.assert_allclose(ours, logits, rtol=1e-4, atol=1e-4)
            # The key is the last layer's feed-forward input: its post-attention LayerNorm's output.
            np.testing.assert_allclose(arrays["test_keys"][row], captured["norm"][0, -1].numpy(), rtol=1e-5, atol=1e-5)
            assert arrays["test_next"][row] == tokens["test"][p + 1]
    finally:
        handle.remove()
    assert arrays["train_keys"].dtype == np.float16 and arrays["train_hidden"].dtype == np.float16
    assert not np.allclose(arrays["test_keys"][:50], arrays["test_hidden"][:50], atol=1e-2)


@pytest.mark.parametrize("kind,stride", [("gpt2", 8), ("llama", 5), ("neox", None)])
def test_strided_perplexity_equals_transformers(tiny_models, tmp_path, kind, stride):
    arrays, tokens, model = stage_run(tmp_path, tiny_models[kind], eval_stride=stride)
    logits = KeyLogits(final_hidden(arrays, "test"), arrays["head_weight"], arrays["head_bias"])
    ours = base_predict(logits, arrays["test_next"])[1].mean()
    test = torch.from_numpy(tokens["test"].astype(np.int64))[None]
    # transformers' perplexity guide, verbatim in substance: max_length = context + 1, the same stride.
    max_length, step, n = CONTEXT + 1, stride or CONTEXT, test.shape[1]
    total, count, prev_end = 0.0, 0, 0
    for begin in range(0, n, step):
        end = min(begin + max_length, n)
        target_len = end - prev_end
        ids = test[:, begin:end]
        targets = ids.clone()
        targets[:, :-target_len] = -100
        with torch.inference_mode():
            loss = model.model(ids, labels=targets).loss
        scored = int((targets[:, 1:] != -100).sum())
        total, count, prev_end = total + float(loss) * scored, count + scored, end
        if end == n:
            break
    assert len(arrays["test_pos"]) == count == n - 1  # every test token once
    assert ours == pytest.approx(total / count, rel=1e-5)


def test_a_hugging_face_model_fine_tunes_with_the_training_code(tiny_models, tmp_path):
    """epochs > 0: the same training loop fine-tunes the model; its weights are stored, reloaded and used."""
    cfg = experiment({"m": {"hf": str(tiny_models["llama"]), "epochs": 2}})
    cfg["train"].update(batch_size=16, lr=3e-3)
    lm_stages.corpus(tmp_path / "c.npz", tmp_path / "c.json", cfg["corpus"], str(tiny_models["llama"]))
    out = {"model": tmp_path / "model.pt", "train_log": tmp_path / "log.csv", "meta": tmp_path / "meta.json"}
    lm_stages.train(tmp_path / "c.npz", tmp_path / "c.json", out, cfg["models"]["m"], cfg["train"], CONTEXT, 500,
                    seed=0, device="cpu", threads=2, config={})  # fmt: skip
    history = pd.read_csv(out["train_log"])
    assert history.epoch.tolist() == [1, 2] and history.loss.iloc[1] < history.loss.iloc[0]
    assert history.val_acc.iloc[1] > 0.1  # random weights start near 1 / vocabulary
    model, meta = lm_stages.load_lm(out["model"])
    assert meta["train"]["epochs"] == 2
    pretrained = transformers.AutoModelForCausalLM.from_pretrained(tiny_models["llama"])
    tuned, original = model.model.state_dict(), pretrained.state_dict()
    assert not torch.equal(tuned["lm_head.weight"], original["lm_head.weight"])
    saved = torch.load(out["model"], weights_only=False)["state_dict"]
    assert all(torch.equal(saved[f"model.{name}"], value) for name, value in tuned.items())


def test_resmem_memorizes_training_positions_at_k1(tiny_models, tmp_path):
    arrays, _, _ = stage_run(tmp_path, tiny_models["gpt2"])
    keys = np.asarray(arrays["train_keys"], np.float32)
    index = faiss.IndexFlatL2(keys.shape[1])
    index.add(keys)
    dist, idx = index.search(keys, 1)
    logits = KeyLogits(final_hidden(arrays, "train"), arrays["head_weight"], arrays["head_bias"])
    labels = np.asarray(arrays["train_next"])
    base = (logits[: len(labels)].argmax(axis=1) == labels).mean()
    distances = np.sqrt(np.maximum(dist, 0))
    correct = sweep_correct(logits, labels, logits, labels, distances, idx, [1], [1.0], [1.0])["resmem"]
    # Every position finds its own key: itself, or a position with the same context (a window's first tokens),
    # whose state and so residual are the same. ResMem then predicts that neighbour's next token exactly:
    # softmax(z) + onehot(y_n) - softmax(z) = onehot(y_n). (faiss computes ‖x‖² + ‖y‖² − 2⟨x, y⟩ with BLAS, so
    # the distance of a key to itself is 0 only up to float32 rounding.)
    assert np.array_equal(keys[idx[:, 0]], keys)
    assert dist[:, 0].max() <= 1e-5 * (keys**2).sum(axis=1).max()
    same_label = labels[idx[:, 0]] == labels
    assert base < 0.2 < 0.9 < same_label.mean()  # random weights know nothing; the datastore knows nearly all
    assert correct[0, 0, 0] == same_label.sum()


def test_hf_models_run_through_the_workflow(tiny_models, lm_run):
    """Experiment hf_tiny of the session's LM run (tests/hf_tiny.py): the three models, NeoX reading GPT-2's
    tokenizer folder, kNN-LM's key and strided evaluation."""
    results = lm_run["hf"]
    corpora = sorted(p.name for p in (results / "corpus").glob("*.npz"))
    assert corpora == sorted(f"{hf.source_label(str(tiny_models[k]))}.npz" for k in ("gpt2", "llama"))
    summary = pd.read_csv(results / "summary.csv")
    assert sorted(summary.model.unique()) == ["gpt2", "llama", "neox"] and len(summary) == 3
    assert summary.base_test_ppl.between(1, 1e4).all() and summary.knnlm_test_ppl.notna().all()
    provenance = json.loads((results / "provenance.json").read_text())
    assert set(provenance["corpora"]) == {hf.source_label(str(tiny_models[k])) for k in ("gpt2", "llama")}
    report = json.loads((results / "gpt2" / "seed0" / "datastore.json").read_text())
    assert report["key"] == "last_ffn_input" and report["eval_stride"] == 12 and report["key_dim"] == WIDTH
    assert (summary.datastore_key == "last_ffn_input").all() and (summary.eval_stride == 12).all()
    assert "- llama: key last_ffn_input, 12 new tokens per window" in (results / "summary.md").read_text()
    assert not list(results.glob("*/seed0/train_checkpoint.pt"))


def test_hf_config_errors_name_the_key(tiny_models, tmp_path):
    with pytest.raises(ConfigError, match=r"lm_experiments\.x\.corpus\.tokenizer: the Hugging Face model m .*model"):
        validate({"lm_experiments": {"x": {"models": {"m": {"hf": "gpt2"}}}}})
    with pytest.raises(ConfigError, match=r"corpus\.tokenizer: model .* but own is trained here"):
        experiment({"m": {"hf": "gpt2"}, "own": {"n_layer": 1}})
    with pytest.raises(ConfigError, match=r"eval_stride: 30 new tokens per window exceed context = 24"):
        experiment({"m": {"hf": "gpt2"}}, eval_stride=30)
    with pytest.raises(ConfigError, match=r"models\.m: Additional properties .*n_layer"):
        experiment({"m": {"hf": "gpt2", "n_layer": 2}})
    # A folder without weights: named before any job.
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "config.json").write_text("{}")
    with pytest.raises(ConfigError, match=rf"models\.m\.hf: the folder {empty} lacks .*save_pretrained"):
        hf.fetch_missing({"lm_experiments": {"x": experiment({"m": {"hf": str(empty)}})}})
    assert hf.source_label("EleutherAI/pythia-160m") == "EleutherAI--pythia-160m"


def test_without_transformers_the_error_says_how_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "transformers", None)  # import transformers now raises ImportError
    config = {"lm_experiments": {"x": experiment({"m": {"hf": "gpt2"}})}}
    with pytest.raises(
        ConfigError, match=r'invalid config at lm_experiments\.x\.models\.m\.hf: .*pip install -e "\.\[hf\]"'
    ):
        hf.fetch_missing(config)


def test_a_missing_hub_model_offline_stops_before_any_job(tmp_path, monkeypatch):
    cfg = experiment({"m": {"hf": "resmem-test/no-such-model"}})
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))
    config = tmp_path / "missing.yaml"
    config.write_text(yaml.safe_dump({"device": "cpu", "lm_experiments": {"x": cfg}}, sort_keys=False))
    proc = snakemake(tmp_path, configfile=config, check=False)
    assert proc.returncode != 0
    message = proc.stdout + proc.stderr
    assert "lm_experiments.x.models.m.hf" in message and "resmem-test/no-such-model" in message
    assert str(tmp_path / "hf_home") in message and "python -m resmem.lm.hf" in message
    assert not (tmp_path / "results").exists()


def test_an_unreachable_hub_fails_at_once_without_retries(monkeypatch, caplog):
    """Without network and without HF_HUB_OFFLINE, the fetch gives up on its first request (the session's guard
    refuses the connection) instead of retrying with backoff, and says which key and how to fetch elsewhere."""
    pytest.importorskip("huggingface_hub")
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    config = {"lm_experiments": {"x": experiment({"m": {"hf": "resmem-test/no-such-model"}})}}
    with caplog.at_level(logging.WARNING), pytest.raises(ConfigError) as error:
        hf.fetch_missing(config)
    assert "lm_experiments.x.models.m.hf" in str(error.value) and "python -m resmem.lm.hf" in str(error.value)
    assert "NetworkBlocked" in str(error.value) or "network blocked" in str(error.value)
    assert not [record for record in caplog.records if "Retrying" in record.getMessage()]


@pytest.mark.parametrize("kind", list(CLASSES))
def test_planned_shape_of_a_saved_model_is_the_loaded_models(tiny_models, kind):
    """The planner reads a model's width, vocabulary and parameter count from its files (config.json and the
    safetensors header) without loading it: the same as the loaded model's."""
    model = getattr(transformers, CLASSES[kind]).from_pretrained(tiny_models[kind])
    shape = hf_shape(str(tiny_models[kind]), None)
    assert shape == {"hidden": WIDTH, "vocab": model.config.vocab_size,
                     "parameters": sum(p.numel() for p in model.parameters())}  # fmt: skip


def test_planned_parameters_of_a_sharded_model_come_from_its_index(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"hidden_size": 64, "vocab_size": 100}))
    index = {"metadata": {"total_size": 2 * 7_000_000}, "weight_map": {}}  # bytes of bfloat16 shards
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(index))
    assert hf_shape(str(tmp_path), None) == {"hidden": 64, "vocab": 100, "parameters": 7_000_000}


def test_pickled_weights_are_refused_unread_with_the_projects_message(tmp_path, capfd):
    """A pytorch_model.bin that pickles os.system: torch's weights-only loader refuses it, and the error is the
    project's (not a bare UnpicklingError advising weights_only=False); the command never ran."""
    import os

    import transformers

    from resmem.lm.model import load_causal_lm
    from tests.hf_tiny import tiny_config

    transformers.GPT2LMHeadModel(tiny_config("gpt2", 40)).save_pretrained(tmp_path / "m")
    (tmp_path / "m" / "model.safetensors").unlink()

    class Command:
        def __reduce__(self):
            return (os.system, (f"touch {tmp_path / 'ran'}",))

    torch.save({"transformer.wte.weight": Command()}, tmp_path / "m" / "pytorch_model.bin")
    with pytest.raises(ConfigError, match=r"models: the weights of .*m' hold pickled objects other than tensors "
                       r"\(.*system.*\); they were refused unread"):  # fmt: skip
        load_causal_lm({"hf": str(tmp_path / "m")})
    assert not (tmp_path / "ran").exists()
