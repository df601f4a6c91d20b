"""Dataset loaders on small data generated here in the real on-disk formats; splits; batches."""

import logging
import os
import pickle
import shutil
import tarfile

import numpy as np
import pytest
import torch
from PIL import Image

from resmem.config import ConfigError
from resmem.vision.data import load_dataset, make_split, train_subset
from resmem.vision.loader import Loader, crop_flip, crop_padding
from tests.images import decoded, mean_std, plain_inputs

CPU = torch.device("cpu")


def make_cifar100_archive(root, per_class=(3, 2), seed=0):
    """cifar-100-python.tar.gz as published: pickled dicts with uint8 rows of 3072 (RGB planes) and
    fine_labels, plus the meta file with the class names."""
    rng = np.random.default_rng(seed)
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    made = {}
    for split, count in zip(("train", "test"), per_class, strict=True):
        labels = np.repeat(np.arange(100), count)
        rows = rng.integers(0, 256, (len(labels), 3072), dtype=np.uint8)
        entry = {
            "data": rows,
            "fine_labels": labels.tolist(),
            "coarse_labels": (labels // 5).tolist(),
            "filenames": [f"img{i}.png" for i in range(len(labels))],
            "batch_label": split,
        }
        (folder / split).write_bytes(pickle.dumps(entry))
        made[split] = (rows.reshape(-1, 3, 32, 32), labels)
    meta = {
        "fine_label_names": [f"class{i:02d}" for i in range(100)],
        "coarse_label_names": [f"super{i}" for i in range(20)],
    }
    (folder / "meta").write_bytes(pickle.dumps(meta))
    with tarfile.open(root / "cifar-100-python.tar.gz", "w:gz") as tar:
        tar.add(folder, arcname="cifar-100-python")
    for path in folder.iterdir():
        path.unlink()
    folder.rmdir()
    return made


@pytest.fixture
def trusted_cifar(monkeypatch):
    """`trust(root)`: the archive generated under root is taken as the published one (its md5 and its files'
    cannot match the real checksums); everything else is the real code's."""
    import torchvision.datasets.cifar as cifar

    from resmem.digests import file_hash

    def trust(root):
        monkeypatch.setattr(cifar.CIFAR100, "tgz_md5", file_hash(root / "cifar-100-python.tar.gz", "md5"))
        monkeypatch.setattr(cifar, "check_integrity", lambda *args, **kwargs: True)

    return trust


def test_cifar100_loads_a_generated_archive(tmp_path, trusted_cifar):
    made = make_cifar100_archive(tmp_path)
    trusted_cifar(tmp_path)
    data = load_dataset({"name": "cifar100", "root": str(tmp_path)})
    assert data.num_classes == 100 and data.classes[:2] == ["class00", "class01"]
    for split in ("train", "test"):
        images, labels = made[split]
        pool = getattr(data, split)
        np.testing.assert_array_equal(pool.images, images)
        np.testing.assert_array_equal(pool.labels, labels)
        assert pool.images.dtype == np.uint8 and pool.channels == 3
    assert (tmp_path / "cifar-100-python" / "train").exists()  # extracted on first use


def test_cifar100_offline_without_data_says_where_to_put_it(tmp_path):
    with pytest.raises(ConfigError, match=r"CIFAR-100 is not under .*: put cifar-100-python.tar.gz \(from https"):
        load_dataset({"name": "cifar100", "root": str(tmp_path)})


def test_cifar100_download_without_network_says_what_to_do(tmp_path):
    """No network (the suite's guard, tests/conftest.py: what an offline machine's socket says): the download's
    error is named, with where to put the archive."""
    with pytest.raises(
        ConfigError, match=r"CIFAR-100 could not be downloaded into .*\(.*network blocked.*\); put cifar-100-python"
    ):
        load_dataset({"name": "cifar100", "root": str(tmp_path), "download": True})
    assert not (tmp_path / "cifar-100-python.tar.gz").exists()


def traversal_archive(path, member="../../escaped.txt", link=None):
    """A tar.gz whose one member would land outside the folder it is extracted into (or a symlink out)."""
    import io

    with tarfile.open(path, "w:gz") as tar:
        info = tarfile.TarInfo(member)
        if link is not None:
            info.type, info.linkname = tarfile.SYMTYPE, link
            tar.addfile(info)
        else:
            info.size = 5
            tar.addfile(info, io.BytesIO(b"owned"))


def test_cifar100_archive_that_is_not_the_published_one_is_never_extracted(tmp_path):
    """A traversal archive where the README says to put CIFAR-100: refused on its checksum, nothing written."""
    root = tmp_path / "data" / "cifar100"
    root.mkdir(parents=True)
    traversal_archive(root / "cifar-100-python.tar.gz")
    with pytest.raises(ConfigError, match=r"cifar-100-python.tar.gz: md5 \w+ is not the published eb9058c3"):
        load_dataset({"name": "cifar100", "root": str(root)})
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["cifar-100-python.tar.gz", "cifar100", "data"]


@pytest.mark.parametrize("member, link", [("../../escaped.txt", None), ("cifar-100-python/link", "/etc/passwd"),
                                          ("cifar-100-python/up", "../../..")])  # fmt: skip
def test_an_archive_whose_members_leave_its_folder_is_refused(tmp_path, member, link):
    """Even with a matching checksum, members out of the root ('..', links out of it) are refused by the data
    filter: nothing appears outside the root, nor in it."""
    from resmem.digests import file_hash
    from resmem.io import extract_archive

    root = tmp_path / "a" / "b"
    root.mkdir(parents=True)
    archive = root / "x.tar.gz"
    traversal_archive(archive, member, link)
    before = set(tmp_path.rglob("*"))
    with pytest.raises(
        ConfigError,
        match=r"x.tar.gz: cannot be extracted into .*b \(.*(outside the destination|link to an absolute path)",
    ):
        extract_archive(archive, root, file_hash(archive, "md5"), "the test")
    assert set(tmp_path.rglob("*")) == before


def test_an_archive_member_with_an_absolute_path_lands_inside_the_root(tmp_path):
    from resmem.digests import file_hash
    from resmem.io import extract_archive

    root = tmp_path / "root"
    root.mkdir()
    traversal_archive(root / "x.tar.gz", f"{tmp_path}/escaped.txt")
    extract_archive(root / "x.tar.gz", root, file_hash(root / "x.tar.gz", "md5"), "the test")
    assert not (tmp_path / "escaped.txt").exists()
    assert (root / str(tmp_path).lstrip("/") / "escaped.txt").read_bytes() == b"owned"


def test_cifar100_subsample_keeps_at_most_n_per_class(tmp_path, trusted_cifar):
    make_cifar100_archive(tmp_path)
    trusted_cifar(tmp_path)
    data = load_dataset({"name": "cifar100", "root": str(tmp_path), "subsample": {"train": 2, "test": 1}})
    assert np.bincount(data.train.labels).tolist() == [2] * 100
    assert np.bincount(data.test.labels).tolist() == [1] * 100


def make_image_folders(root, splits=("train", "test"), classes=("cat", "dog", "emu"), per_class=(6, 3), size=12):
    """PNG files in class folders; each class has its own colour so that a model can tell them apart."""
    rng = np.random.default_rng(0)
    for split, count in zip(splits, per_class, strict=True):
        for c, name in enumerate(classes):
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(count):
                pixels = rng.integers(0, 60, (size, size, 3)).astype(np.uint8)
                pixels[..., c] += 180
                Image.fromarray(pixels).save(folder / f"{i}.png")


def test_imagefolder_maps_classes_and_splits(tmp_path):
    make_image_folders(tmp_path)
    data = load_dataset({"name": "imagefolder", "root": str(tmp_path), "image_size": 8})
    assert data.classes == ["cat", "dog", "emu"] and data.num_classes == 3
    assert np.bincount(data.train.labels).tolist() == [6, 6, 6]
    assert all(f"/train/{data.classes[y]}/" in p for p, y in zip(data.train.paths, data.train.labels, strict=True))
    split = make_split(data, 0.25, 1 / 3, seed=0)
    assert len(split["test_idx"]) == 9 and np.bincount(data.train.labels[split["val_idx"]]).tolist() == [2, 2, 2]
    assert not set(split["train_idx"]) & set(split["val_idx"])
    np.testing.assert_array_equal(make_split(data, 0.25, 1 / 3, seed=0)["val_idx"], split["val_idx"])


def test_class_folders_list_what_torchvisions_image_folder_lists(tmp_path):
    """The folder listing every folder dataset uses, against torchvision's ImageFolder on one tree: classes in
    name order (capitals first), images in subfolders and behind a linked folder, extensions in any case,
    other files and loose files skipped; a folder without classes and a class without images are named."""
    from torchvision.datasets import ImageFolder

    from resmem.vision.data import class_folders

    files = ["b/1.png", "b/0.JPG", "a/sub/deep/2.webp", "a/sub/1.jpeg", "a/0.Png", "a/notes.txt", "a/.x.tiff",
             "Zeta/0.bmp", "Zeta/0.bmpx", "loose.png", "other/0.pgm"]  # fmt: skip
    for name in files:
        (tmp_path / "pool" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "pool" / name).write_bytes(b"")
    (tmp_path / "pool" / "b" / "linked").symlink_to(tmp_path / "pool" / "other", target_is_directory=True)
    reference = ImageFolder(str(tmp_path / "pool"), loader=lambda path: path)
    classes, samples, _ = class_folders("imagefolder", tmp_path / "pool")
    assert (classes, samples) == (reference.classes, reference.samples)
    assert classes == ["Zeta", "a", "b", "other"] and len(samples) == 9
    assert samples[-2] == (str(tmp_path / "pool" / "b" / "linked" / "0.pgm"), 2)

    (tmp_path / "pool" / "c").mkdir()
    with pytest.raises(ConfigError, match=r"dataset imagefolder: no image file \(\.jpg, .*\) in the class folders c "):
        class_folders("imagefolder", tmp_path / "pool")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match=r"dataset imagefolder: .*empty holds no class folders; put each class"):
        class_folders("imagefolder", tmp_path / "empty")


def test_image_folders_follow_links_only_inside_their_split(tmp_path):
    """A class folder linked to `..` would list the whole dataset, test images included, as one class (772 images
    instead of 12 in the issue's case): a link out of the split, a loop, a FIFO and a name that is not UTF-8
    are each named; a test folder that is the training folder is refused."""
    from resmem.vision.data import class_folders

    make_image_folders(tmp_path)
    train = tmp_path / "train"
    (train / "loop").symlink_to("..", target_is_directory=True)
    with pytest.raises(ConfigError, match=r"train/loop links to .*, outside .*train; links in an image folder"):
        class_folders("imagefolder", train)
    (train / "loop").unlink()
    (train / "cat" / "again").symlink_to(train / "cat", target_is_directory=True)
    with pytest.raises(ConfigError, match=r"cat/again leads back to .*cat, a folder this class already lists"):
        class_folders("imagefolder", train)
    (train / "cat" / "again").unlink()
    (train / "dog" / "outside.png").symlink_to(tmp_path / "test" / "dog" / "0.png")
    with pytest.raises(ConfigError, match=r"dog/outside.png links to .*test/dog/0.png, outside"):
        class_folders("imagefolder", train)
    (train / "dog" / "outside.png").unlink()
    os.mkfifo(train / "emu" / "fifo.jpg")  # reading it would block forever
    with pytest.raises(ConfigError, match=r"emu/fifo.jpg is not a regular file \(a FIFO"):
        class_folders("imagefolder", train)
    (train / "emu" / "fifo.jpg").unlink()
    os.close(os.open(os.fsencode(train / "emu") + b"/caf\xe9.png", os.O_CREAT | os.O_WRONLY))  # Latin-1 bytes
    with pytest.raises(ConfigError, match=r"emu/caf\\udce9.png' has a name that is not UTF-8; rename it"):
        class_folders("imagefolder", train)
    os.unlink(os.fsencode(train / "emu") + b"/caf\xe9.png")
    classes, samples, resolved = class_folders("imagefolder", train)
    assert len(samples) == 18 and resolved == [str(train.resolve() / p[len(str(train)) + 1 :]) for p, _ in samples]
    shutil.rmtree(tmp_path / "test")
    (tmp_path / "test").symlink_to(train, target_is_directory=True)
    with pytest.raises(ConfigError, match=r"test/cat/0.png is also a training image .*; a test image must not"):
        load_dataset({"name": "imagefolder", "root": str(tmp_path), "image_size": 8})


def test_a_test_image_with_the_bytes_of_a_training_image_stops_the_split(tmp_path, caplog):
    """A copy under another name (no link, so the paths cannot show it) leaks the test set as surely as a link:
    the split job names each copy and writes nothing. Files that share their size and their first and last
    COPY_PROBE_BYTES but differ in between are not copies."""
    from resmem.vision.data import COPY_PROBE_BYTES, check_no_copies
    from resmem.vision.stages import split

    make_image_folders(tmp_path)
    cfg = {"name": "imagefolder", "root": str(tmp_path), "image_size": 8, "test_fraction": 0.25,
           "val_fraction": 0.2, "split_seed": 0}  # fmt: skip
    body = np.random.default_rng(1).bytes(3 * COPY_PROBE_BYTES)
    (tmp_path / "train" / "cat" / "big.png").write_bytes(body)
    inner = 3 * COPY_PROBE_BYTES // 2
    (tmp_path / "test" / "cat" / "big.png").write_bytes(body[:inner] + bytes([body[inner] ^ 1]) + body[inner + 1 :])
    with caplog.at_level(logging.INFO, logger="resmem"):
        check_no_copies(load_dataset(cfg))  # same size and ends, other bytes inside: no copy
    # small PNGs whose ends match are the same file (none here): only the two big files are hashed whole
    assert caplog.messages[-1] == (
        "byte copies across the splits: sha256 of 2 files read, 0 test files alike a training file"
    )
    for copy, original in (("emu/copy.png", "dog/2.png"), ("cat/z.png", "emu/5.png")):
        shutil.copyfile(tmp_path / "train" / original, tmp_path / "test" / copy)
    out = tmp_path / "split.npz"
    with pytest.raises(ConfigError) as raised:
        split(out, cfg)
    assert str(raised.value) == (
        f"dataset imagefolder: 2 test images have the same bytes as a training image ({tmp_path}/test/cat/z.png = "
        f"{tmp_path}/train/emu/5.png; {tmp_path}/test/emu/copy.png = {tmp_path}/train/dog/2.png); a test image "
        "must not be in the training split: remove one copy of each"
    )
    assert not out.exists()


def test_imagefolder_subsampling_is_per_class_and_deterministic(tmp_path):
    make_image_folders(tmp_path)
    cfg = {"name": "imagefolder", "root": str(tmp_path), "subsample": {"train": 4}, "split_seed": 3}
    a, b = load_dataset(cfg), load_dataset(cfg)
    assert np.bincount(a.train.labels).tolist() == [4, 4, 4] and len(a.test) == 9
    assert a.train.paths == b.train.paths


def test_imagenet_layout_reads_train_and_val(tmp_path):
    make_image_folders(tmp_path, splits=("train", "val"))
    data = load_dataset({"name": "imagenet", "root": str(tmp_path)})
    assert len(data.train) == 18 and len(data.test) == 9


@pytest.mark.parametrize("name", ["imagenet", "imagefolder"])
def test_missing_folders_are_named(tmp_path, name):
    with pytest.raises(ConfigError, match=rf"dataset {name}: .*train.* not found"):
        load_dataset({"name": name, "root": str(tmp_path / "nowhere")})


def test_folder_loader_batches(tmp_path):
    make_image_folders(tmp_path)
    data = load_dataset({"name": "imagefolder", "root": str(tmp_path), "image_size": 8})
    loader = Loader(data.train, np.arange(18), batch_size=5, device=CPU, augment="auto")
    plain = list(loader.epoch())
    assert [len(y) for _, y in plain] == [5, 5, 5, 3]
    assert plain[0][0].shape == (5, 3, 8, 8) and plain[0][0].dtype == torch.float32
    np.testing.assert_array_equal(torch.cat([y for _, y in plain]).numpy(), data.train.labels)
    first = torch.cat([y for _, y in loader.epoch(seed=1)])
    again = torch.cat([y for _, y in loader.epoch(seed=1)])
    assert torch.equal(first, again) and not torch.equal(first, torch.as_tensor(data.train.labels))


def test_training_fractions_are_stratified_and_nested():
    digits = load_dataset({"name": "digits"})
    train_idx = make_split(digits, 0.25, 0.2, 0)["train_idx"]
    labels = digits.train.labels
    quarter, half = (train_subset(train_idx, labels, f, seed=0) for f in (0.25, 0.5))
    assert set(quarter) < set(half) < set(train_idx)
    assert abs(len(half) - len(train_idx) / 2) <= 10
    assert np.abs(np.bincount(labels[half]) - np.bincount(labels[train_idx]) / 2).max() <= 1
    np.testing.assert_array_equal(train_subset(train_idx, labels, 1.0, seed=0), train_idx)


def test_crop_flip_returns_shifted_or_mirrored_windows():
    x = torch.arange(2 * 3 * 6 * 6, dtype=torch.float32).reshape(2, 3, 6, 6) + 1
    assert crop_padding(32) == 4 and crop_padding(6) == 1  # He et al.'s 4 px at CIFAR's 32 px
    out = crop_flip(x, torch.Generator().manual_seed(0), padding=4)
    padded = torch.nn.functional.pad(x, (4,) * 4)
    for b in range(2):
        windows = [padded[b, :, dy : dy + 6, dx : dx + 6] for dy in range(9) for dx in range(9)]
        assert any(torch.equal(out[b], w) or torch.equal(out[b], w.flip(2)) for w in windows)


def test_in_memory_loader_augments_only_with_a_seed():
    digits = load_dataset({"name": "digits"})
    loader = Loader(digits.train, np.arange(64), batch_size=64, device=CPU, augment="crop_flip")
    ((plain, _),) = loader.epoch()
    expected = torch.as_tensor(digits.train.images[:64], dtype=torch.float32) / 16.0
    torch.testing.assert_close(plain, expected)
    ((augmented, _),) = loader.epoch(seed=0)
    assert augmented.shape == plain.shape and not torch.equal(
        torch.sort(augmented.flatten())[0], torch.sort(plain.flatten())[0]
    )


@pytest.fixture(scope="module")
def digit_folders(tmp_path_factory):
    from tests.images import digits_jpeg_folders

    root = tmp_path_factory.mktemp("digit_jpegs")
    digits_jpeg_folders(root)
    return root


@pytest.mark.parametrize("augment", ["none", "flip", "crop_flip"])
def test_folder_evaluation_view_is_the_decoded_image(digit_folders, augment):
    """Networks trained on whole images are evaluated and embedded on the whole image, not a zoomed crop."""
    data = load_dataset({"name": "imagefolder", "root": str(digit_folders), "image_size": 32})
    rows = np.arange(0, len(data.test), 37)
    loader = Loader(data.test, rows, batch_size=8, device=CPU, augment=augment)
    seen = torch.cat([x for x, _ in loader.epoch()])
    assert torch.equal(seen, plain_inputs(data.test, [data.test.paths[i] for i in rows]))


def test_resized_crop_training_is_evaluated_on_the_center_crop(digit_folders):
    data = load_dataset({"name": "imagefolder", "root": str(digit_folders), "image_size": 32})
    loader = Loader(data.test, np.arange(4), batch_size=4, device=CPU, augment="resized_crop_flip")
    ((seen, _),) = loader.epoch()
    plain = decoded(data.test.paths[:4])
    zoomed = torch.nn.functional.interpolate(plain, size=37, mode="bilinear", antialias=True)[..., 2:34, 2:34]
    mean, std = mean_std(data.test)
    assert (seen * std + mean - zoomed).abs().mean() < 0.02 < (seen * std + mean - plain).abs().mean()


def test_flip_mirrors_whole_images_only_with_a_seed():
    digits = load_dataset({"name": "digits"})
    loader = Loader(digits.train, np.arange(64), batch_size=64, device=CPU, augment="flip")
    ((plain, _),) = loader.epoch()
    ((shuffled, _),) = loader.epoch(seed=0)
    as_seen = {p.numpy().tobytes(): "kept" for p in plain}
    as_seen.update({p.flip(2).numpy().tobytes(): "mirrored" for p in plain if not torch.equal(p, p.flip(2))})
    seen = [as_seen.get(x.numpy().tobytes()) for x in shuffled]
    assert None not in seen and 10 < seen.count("mirrored") < 54


def folder_dataset(root, **settings) -> dict:
    return {"name": "imagefolder", "root": str(root), "image_size": 8, "cache": "auto", "cache_mb": 64, **settings}


def test_decode_keeps_folder_images_in_memory_within_the_budget_only(tmp_path):
    from resmem.vision.stages import decode, with_decoded

    make_image_folders(tmp_path)
    decode(tmp_path / "images.npz", folder_dataset(tmp_path), "none", threads=2)
    data = with_decoded(load_dataset(folder_dataset(tmp_path)), tmp_path / "images.npz")
    assert data.train.images.shape == (18, 3, 8, 8) and data.train.images.dtype == np.uint8
    streamed = Loader(load_dataset(folder_dataset(tmp_path)).train, np.arange(18), 18, CPU)
    in_memory = Loader(data.train, np.arange(18), 18, CPU)
    assert torch.equal(next(streamed.epoch())[0], next(in_memory.epoch())[0])  # the same evaluation pixels
    too_small = folder_dataset(tmp_path, cache_mb=18 * 3 * 8 * 8 / 2**20)  # the test pool no longer fits
    decode(tmp_path / "streamed.npz", too_small, "none", threads=1)
    data = with_decoded(load_dataset(too_small), tmp_path / "streamed.npz")
    assert data.train.images is None and data.test.images is None and len(data.train.paths) == 18


def test_decoded_images_of_other_files_are_named(tmp_path):
    from resmem.io import ArtifactError
    from resmem.vision.stages import decode, with_decoded

    make_image_folders(tmp_path)
    decode(tmp_path / "images.npz", folder_dataset(tmp_path), "none", threads=1)
    Image.fromarray(np.zeros((12, 12, 3), np.uint8)).save(tmp_path / "train" / "cat" / "new.png")
    with pytest.raises(ArtifactError, match=r"images.npz: decoded from other train files .*rerun decode"):
        with_decoded(load_dataset(folder_dataset(tmp_path)), tmp_path / "images.npz")


def test_auto_augment_of_folders_depends_on_their_size_not_on_the_cache(tmp_path):
    from resmem.vision.loader import resolve_augment
    from resmem.vision.stages import decode

    make_image_folders(tmp_path)
    small, large = (load_dataset(folder_dataset(tmp_path, image_size=s)).train for s in (32, 64))
    assert resolve_augment("auto", small) == "crop_flip" and resolve_augment("auto", large) == "resized_crop_flip"
    with pytest.raises(ConfigError, match=r"invalid config at experiments.x.dataset.cache: memory keeps the images"):
        decode(tmp_path / "images.npz", folder_dataset(tmp_path, image_size=64, cache="memory"), "auto", 1,
               "experiments.x")  # fmt: skip
    assert not (tmp_path / "images.npz").exists()


def test_memory_cache_with_random_resized_crops_names_the_key():
    from resmem.config import validate

    experiment = {"models": {"m": {"arch": "small_cnn"}}, "dataset": {"name": "imagefolder", "cache": "memory"},
                  "train": {"augment": "resized_crop_flip"}}  # fmt: skip
    with pytest.raises(ConfigError, match=r"invalid config at experiments.x.dataset.cache: memory keeps"):
        validate({"experiments": {"x": experiment}})
