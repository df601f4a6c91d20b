"""Files from elsewhere are data, never code: a pickled call planted in a model file, a training checkpoint or a
cached weights file is refused before it runs (the marker file it would create never appears), and the run
goes on or stops with a message naming the file."""

import hashlib
import os

import numpy as np
import pytest
import torch
import torchvision
import yaml

from resmem.config import ConfigError, load
from resmem.io import ArtifactError
from resmem.train import train
from resmem.vision.data import Pool
from resmem.vision.loader import Loader
from resmem.vision.models import build_model
from resmem.vision.stages import load_model
from tests.conftest import REPO


class PlantedCall:
    """Unpickles as os.system(command): what a crafted .pt file can hold."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def planted_file(path, marker, wrap=lambda call: call):
    torch.save(wrap(PlantedCall(marker)), path)
    return path


def test_the_planted_call_runs_when_unpickled(tmp_path):
    """The crafted files below are effective: loading one the unsafe way runs the command."""
    planted_file(tmp_path / "x.pt", tmp_path / "ran")
    torch.load(tmp_path / "x.pt", weights_only=False)
    assert (tmp_path / "ran").exists()


def test_a_model_file_holding_a_pickled_call_is_refused(tmp_path):
    path = planted_file(tmp_path / "model.pt", tmp_path / "ran", lambda call: {"state_dict": call, "meta": {}})
    with pytest.raises(ArtifactError, match=r"model.pt: not a model file this workflow wrote .*rerun train"):
        load_model(path)
    assert not (tmp_path / "ran").exists()


def test_a_model_file_for_another_model_spec_is_refused(tmp_path):
    """The network is the config's: a file trained for another spec names both and the rule to rerun."""
    net = build_model({"arch": "small_cnn", "width": 2}, 10, 1)
    meta = {"model": {"arch": "small_cnn", "width": 2}, "num_classes": 10, "in_channels": 1}
    torch.save({"state_dict": net.state_dict(), "meta": meta}, tmp_path / "model.pt")
    model, _ = load_model(tmp_path / "model.pt", {"arch": "small_cnn", "width": 2})
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), net.state_dict().values(), strict=True))
    with pytest.raises(
        ArtifactError, match=r"trained for the model \{'arch': 'small_cnn', 'width': 2\}, but the config"
    ):
        load_model(tmp_path / "model.pt", {"arch": "small_cnn", "width": 4})


def test_a_checkpoint_holding_a_pickled_call_is_ignored_and_training_runs(tmp_path):
    recipe = load(REPO / "config" / "smoke.yaml")["experiments"]["smoke"]["train"]
    recipe = {**recipe, "epochs": 1}
    rng = np.random.default_rng(0)
    pool = Pool(rng.integers(0, 10, 40), images=rng.integers(0, 16, (40, 1, 8, 8)).astype(np.uint8), scale=16.0)
    loader = Loader(pool, np.arange(40), 16, torch.device("cpu"))
    checkpoint = planted_file(tmp_path / "train_checkpoint.pt", tmp_path / "ran", lambda call: {"history": call})
    history = train(build_model({"arch": "small_cnn", "width": 2}, 10, 1), loader, loader, recipe, 0,
                    torch.device("cpu"), checkpoint)  # fmt: skip
    assert [row["epoch"] for row in history] == [1]
    assert not (tmp_path / "ran").exists()


@pytest.mark.parametrize("hash_matches", [False, True])
def test_cached_pretrained_weights_holding_a_pickled_call_are_refused(tmp_path, monkeypatch, hash_matches):
    """torchvision weights in the hub cache: a file whose sha256 is not the prefix in its name is refused before
    it is read; one whose name matches its content is still read as data only."""
    checkpoints = tmp_path / "hub" / "checkpoints"
    checkpoints.mkdir(parents=True)
    planted = planted_file(tmp_path / "planted.pt", tmp_path / "ran")
    prefix = hashlib.sha256(planted.read_bytes()).hexdigest()[:8] if hash_matches else "f37072fd"
    planted.rename(checkpoints / f"resnet18-{prefix}.pth")
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    weights = torchvision.models.Weights(f"https://example.invalid/resnet18-{prefix}.pth", None, {})
    monkeypatch.setattr(torchvision.models, "get_model_weights", lambda name: type("W", (), {"DEFAULT": weights}))
    message = "not a plain weights file" if hash_matches else f"is not the {prefix} its name promises"
    with pytest.raises(ConfigError, match=message):
        build_model({"arch": "resnet18", "pretrained": True}, 10, 3)
    assert not (tmp_path / "ran").exists()


def datastore_with(tmp_path, **replaced):
    """A small datastore in the workflow's format, with some arrays replaced."""
    arrays = {
        f"{s}_keys": np.zeros((4, 3), np.float16 if s == "train" else np.float32) for s in ("train", "val", "test")
    }
    arrays |= {f"{s}_{kind}": np.zeros(4, np.int64) for s in ("train", "val", "test") for kind in ("next", "pos")}
    arrays |= {"head_weight": np.zeros((5, 3), np.float32), "head_bias": np.zeros(5, np.float32)}
    np.savez(tmp_path / "datastore.npz", **(arrays | replaced))
    return tmp_path / "datastore.npz"


def test_an_object_array_in_a_datastore_fails_naming_the_file_and_array(tmp_path):
    """Memmapped, an object array would hand raw pointers to numpy (a crash on first access): refused, in a
    process that exits with an error instead of a signal."""
    import subprocess
    import sys

    path = datastore_with(tmp_path, train_keys=np.array([object()] * 4, dtype=object))
    code = f"from resmem.lm.stages import load_datastore; load_datastore({str(path)!r})"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert f"ArtifactError: {path}: array 'train_keys' has dtype object; only plain numbers" in proc.stderr


@pytest.mark.parametrize("mmap", [True, False])
def test_an_array_declaring_more_rows_than_stored_is_refused(tmp_path, mmap):
    """A header that declares 1,000 values over a member of 10: not read from the next member's bytes."""
    import io as bytes_io
    import zipfile

    from resmem.io import load_npz

    member = bytes_io.BytesIO()
    np.lib.format.write_array_header_1_0(member, {"descr": "<i8", "fortran_order": False, "shape": (1000,)})
    member.write(np.arange(10, dtype=np.int64).tobytes())
    with zipfile.ZipFile(tmp_path / "x.npz", "w", zipfile.ZIP_STORED) as archive:
        archive.writestr("short.npy", member.getvalue())
        with archive.open("next.npy", "w") as f:
            np.lib.format.write_array(f, np.full(2000, 7, np.int64))
    with pytest.raises(ArtifactError, match=r"x.npz: array 'short' declares shape \(1000,\) \(8,000 bytes\) but its "
                                            r"member holds 80; the file is truncated"):  # fmt: skip
        load_npz(tmp_path / "x.npz", ["short"], mmap=mmap)
    assert load_npz(tmp_path / "x.npz", ["next"], mmap=mmap)["next"].sum() == 14_000


def test_wrong_dtypes_and_byte_orders_name_the_array(tmp_path):
    from resmem.lm.stages import load_datastore

    with pytest.raises(ArtifactError, match=r"array 'train_keys' has dtype >f2, not this machine's byte order"):
        load_datastore(datastore_with(tmp_path, train_keys=np.zeros((4, 3), ">f2")))
    with pytest.raises(ArtifactError, match=r"array 'train_next' has dtype float64, expected int64"):
        load_datastore(datastore_with(tmp_path, train_next=np.zeros(4)))
    with pytest.raises(ArtifactError, match=r"array 'head_bias' has dtype \[\('a', '<i4'\)\]; only plain"):
        load_datastore(datastore_with(tmp_path, head_bias=np.zeros(5, [("a", "<i4")])))


def test_a_failed_write_keeps_the_finished_file_and_leaves_no_scratch(tmp_path, monkeypatch):
    """A flush that fails (a full disk, an I/O error) raises; the result already under the name stays whole."""
    import errno

    from resmem import io

    io.write_json(tmp_path / "summary.json", {"finished": True})

    def full_disk(path):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(io, "fsync_path", full_disk)
    with pytest.raises(OSError, match="No space left"):
        io.write_json(tmp_path / "summary.json", {"finished": False})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["summary.json"]
    assert '"finished": true' in (tmp_path / "summary.json").read_text()


def test_an_index_write_on_a_full_disk_fails_and_keeps_the_old_index(tmp_path, monkeypatch):
    """faiss writes through a Python file, so the final flush's ENOSPC (/dev/full here) is an error, not a
    truncated index under the final name."""
    import builtins

    import faiss

    from resmem import io, knn

    first = faiss.IndexFlatL2(4)
    first.add(np.ones((3, 4), np.float32))
    record = knn.write_index(first, tmp_path / "index.faiss")
    assert record["ntotal"] == 3 and record["bytes"] == (tmp_path / "index.faiss").stat().st_size
    second = faiss.IndexFlatL2(4)
    second.add(np.zeros((50, 4), np.float32))
    monkeypatch.setattr(io, "open", lambda path, mode: builtins.open("/dev/full", mode), raising=False)
    with pytest.raises(OSError, match="No space left"):
        knn.write_index(second, tmp_path / "index.faiss")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["index.faiss"]
    assert knn.read_index(tmp_path / "index.faiss", record).ntotal == 3


def test_an_index_file_that_is_not_the_recorded_one_is_refused_before_faiss_reads_it(tmp_path):
    import faiss

    from resmem import knn

    index = faiss.IndexFlatL2(4)
    index.add(np.ones((3, 4), np.float32))
    record = knn.write_index(index, tmp_path / "index.faiss")
    (tmp_path / "index.faiss").write_bytes(b"\x00" * record["bytes"])  # same size, other bytes
    with pytest.raises(ArtifactError, match=r"index.faiss \(recorded: IndexFlatL2, d = 4, 3 vectors\): the file is"):
        knn.read_index(tmp_path / "index.faiss", record)


def test_artifacts_get_the_umask_permissions(tmp_path):
    from resmem import io

    mask = os.umask(0o022)
    os.umask(mask)
    io.write_json(tmp_path / "x.json", {})
    assert (tmp_path / "x.json").stat().st_mode & 0o777 == 0o666 & ~mask


def test_a_killed_streamed_write_leaves_scratch_that_the_next_attempt_removes(tmp_path):
    from resmem import io

    (tmp_path / ".datastore.npz.train_keys.npy").write_bytes(b"x" * 1000)  # a killed attempt's scratch array
    (tmp_path / ".datastore.npz.k2j4h1.npz").write_bytes(b"x" * 1000)  # and its half-written zip
    io.save_npz_streaming(tmp_path / "datastore.npz", iter([("a", np.arange(5))]), {"a": 5})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["datastore.npz"]


def test_a_write_killed_mid_way_leaves_a_temporary_file_that_the_next_write_removes(tmp_path):
    """SIGKILL inside an atomic write (no cleanup can run) leaves its hidden temporary file; the next write of the
    same path removes it, and leaves other files beside it alone."""
    import signal
    import subprocess
    import sys

    code = ("import os, signal, sys; from resmem import io\n"
            "with io.atomic_path(sys.argv[1]) as tmp:\n"
            "    tmp.write_text('half'); os.kill(os.getpid(), signal.SIGKILL)")  # fmt: skip
    killed = subprocess.run([sys.executable, "-c", code, tmp_path / "summary.md"], cwd=REPO)
    assert killed.returncode == -signal.SIGKILL
    (left,) = tmp_path.iterdir()
    assert left.name.startswith(".summary.md.") and left.read_text() == "half"
    (tmp_path / ".summary.md.notes").write_text("not a temporary file of a write")
    from resmem import io

    io.write_text(tmp_path / "summary.md", "whole")
    assert sorted(p.name for p in tmp_path.iterdir()) == [".summary.md.notes", "summary.md"]


def test_a_streamed_write_that_cannot_reserve_its_disk_fails_before_writing(tmp_path, monkeypatch):
    import errno

    from resmem import io

    def full(fd, offset, length):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "posix_fallocate", full)
    with pytest.raises(ArtifactError, match=r"datastore.npz: cannot reserve .* GB for .datastore.npz.a.npy in .*"):
        io.save_npz_streaming(tmp_path / "datastore.npz", iter([("a", np.arange(5))]), {"a": 5})
    assert list(tmp_path.iterdir()) == []


def test_the_training_checkpoint_is_deleted_only_after_the_model_is_written(tmp_path, monkeypatch):
    """A failure while the results of a finished training are written loses no training: the checkpoint stays
    for the rerun to resume from."""
    from resmem import io, stages

    recipe = {**load(REPO / "config" / "smoke.yaml")["experiments"]["smoke"]["train"], "epochs": 1}
    rng = np.random.default_rng(0)
    pool = Pool(rng.integers(0, 10, 40), images=rng.integers(0, 16, (40, 1, 8, 8)).astype(np.uint8), scale=16.0)
    loader = Loader(pool, np.arange(40), 16, torch.device("cpu"))
    out = {"model": tmp_path / "model.pt", "train_log": tmp_path / "log.csv", "meta": tmp_path / "meta.json"}

    def fails(path, obj):
        raise OSError("I/O error")

    monkeypatch.setattr(io, "write_json", fails)
    with pytest.raises(OSError, match="I/O error"):
        stages.fit_and_save(build_model({"arch": "small_cnn", "width": 2}, 10, 1), loader, loader, recipe, 0,
                            torch.device("cpu"), out, {})  # fmt: skip
    assert (tmp_path / "train_checkpoint.pt").exists()


def test_a_dataset_root_that_is_missing_stops_the_run_before_any_job(tmp_path):
    from tests.conftest import snakemake

    config = {"experiments": {"folders": {"dataset": {"name": "imagefolder", "root": str(tmp_path / "nowhere")},
                                          "models": {"cnn": {"arch": "small_cnn"}}}}}  # fmt: skip
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(config))
    proc = snakemake(tmp_path, configfile=tmp_path / "c.yaml", check=False)
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0 and "Traceback" not in output
    assert f"invalid config at experiments.folders.dataset.root: {tmp_path}/nowhere/train is not a folder" in output
    assert not (tmp_path / "results").exists()


def test_corpus_files_are_checked_before_any_job(tmp_path):
    from resmem.config import check_input_paths

    config = load(REPO / "config" / "config.yaml")
    corpus = config["lm_experiments"]["stdlib_lm"]["corpus"]
    corpus.update(name="text", path=str(tmp_path / "texts"))
    with pytest.raises(ConfigError, match=rf"lm_experiments.stdlib_lm.corpus.path: {tmp_path}/texts does not exist"):
        check_input_paths(config)
    (tmp_path / "texts").mkdir()
    corpus.update(tokenizer="bpe", tokenizer_file=str(tmp_path / "tok.json"))
    with pytest.raises(ConfigError, match=r"corpus.tokenizer_file: .*tok.json does not exist"):
        check_input_paths(config)


def test_images_are_opened_by_format_and_size(tmp_path):
    """A '.jpg' that is PostScript (PIL would hand it to Ghostscript) and an image above PIL's bomb threshold are
    errors naming the file; a real JPEG opens."""
    from PIL import Image

    from resmem.vision.loader import open_image

    (tmp_path / "eps.jpg").write_bytes(b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 8 8\nshowpage\n")
    with pytest.raises(ConfigError, match=r"eps.jpg: not an image this workflow reads .*formats JPEG, PNG"):
        open_image(tmp_path / "eps.jpg")
    Image.new("1", (10_000, 9_000)).save(tmp_path / "bomb.png")  # 90 Mpx, a few kB on disk
    with pytest.raises(ConfigError, match=r"bomb.png: not an image .*at most 89,478,485 pixels"):
        open_image(tmp_path / "bomb.png")
    Image.new("RGB", (5, 4), (200, 10, 10)).save(tmp_path / "ok.jpg")
    assert open_image(tmp_path / "ok.jpg").size == (5, 4)


def test_an_image_replaced_by_a_fifo_after_listing_is_refused_at_decode(tmp_path):
    """The listing refuses FIFOs, but one put in an image's place before its decode must not block the loader
    forever: the decode itself (in a thread here, so a hang fails the test instead of stalling it) names it."""
    import threading

    from PIL import Image

    from resmem.vision.loader import open_image

    Image.new("RGB", (5, 4)).save(tmp_path / "cat.jpg")
    assert open_image(tmp_path / "cat.jpg").size == (5, 4)
    (tmp_path / "cat.jpg").unlink()
    os.mkfifo(tmp_path / "cat.jpg")
    raised = []

    def decode():
        try:
            open_image(tmp_path / "cat.jpg")
        except Exception as exc:
            raised.append(exc)

    worker = threading.Thread(target=decode, daemon=True)
    worker.start()
    worker.join(timeout=10)
    assert not worker.is_alive(), "open_image blocked on a FIFO"
    assert isinstance(raised[0], ConfigError)
    assert "cat.jpg: not a regular file (a FIFO, socket or device)" in str(raised[0])


def test_keys_that_overflow_float16_fail_the_datastore_naming_the_array(tmp_path):
    from resmem.lm.stages import finite

    states = np.array([[1.0, 2.0], [70_000.0, 0.0]], np.float32)
    assert finite(states[:1].astype(np.float16), "train_keys", tmp_path / "datastore.npz").shape == (1, 2)
    with pytest.raises(ArtifactError, match=r"datastore.npz: train_keys has 1 rows with inf or NaN .*65,504"):
        with np.errstate(over="ignore"):
            finite(states.astype(np.float16), "train_keys", tmp_path / "datastore.npz")


@pytest.mark.parametrize("compressed", [False, True])
def test_an_object_array_in_a_users_embeddings_file_is_a_config_error(tmp_path, compressed):
    from resmem.vision.external import check_file

    arrays = {f"{s}_{kind}": np.zeros((4, 3), np.float32) for s in ("train", "test") for kind in ("emb", "logits")}
    arrays |= {"train_y": np.zeros(4, np.int64), "test_y": np.zeros(4, np.int64)}
    arrays["test_emb"] = np.array([object()] * 4, dtype=object)
    (np.savez_compressed if compressed else np.savez)(tmp_path / "emb.npz", **arrays)
    with pytest.raises(ConfigError, match=r"invalid config at experiments.x.embeddings.m: .*emb.npz: array 'test_emb' "
                                          r"has dtype object"):  # fmt: skip
        check_file(tmp_path / "emb.npz", "experiments.x.embeddings.m")


def test_every_loader_in_the_package_refuses_pickles_explicitly():
    """Every np.load passes allow_pickle=False and every torch.load weights_only=True, spelled out (a default can
    change between versions): found by parsing the package, so that removing a flag fails here."""
    import ast

    calls = []
    for path in sorted((REPO / "resmem").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "load":
                owner = node.func.value.id if isinstance(node.func.value, ast.Name) else None
                flag = {"np": "allow_pickle", "torch": "weights_only"}.get(owner)
                if flag:
                    given = {k.arg: k.value.value for k in node.keywords if isinstance(k.value, ast.Constant)}
                    calls.append((f"{path.name}:{node.lineno}", owner, given.get(flag)))
    assert len(calls) >= 4, calls
    assert all(value is (owner == "torch") for _, owner, value in calls), calls
