"""Artifacts: atomic writes, checked loads, provenance."""

from __future__ import annotations

import contextlib
import errno
import glob
import json
import logging
import os
import re
import shutil
import struct
import tempfile
import zipfile
from pathlib import Path

import numpy as np

from resmem.config import ConfigError
from resmem.digests import HashingWriter, file_hash, remember

log = logging.getLogger("resmem")

COMPRESSED_READ_BYTES = 4 * 2**30  # the most one compressed .npz array may inflate to in memory


def fetch_or_explain(at: str, missing: str, folder, fetch, advice: str) -> None:
    """Run `fetch()`, a download into `folder` for the config key `at`, in the process that plans the workflow;
    any failure (no network, the hub offline, an unknown name) becomes a ConfigError that names the key, what is
    `missing` from the folder, and `advice` on getting it there."""
    log.info("%s: fetching into %s", at, folder)
    try:
        fetch()
    except Exception as exc:  # an OSError without network, the hub's own errors, a bad file
        raise ConfigError(
            f"invalid config at {at}: {missing} not in {folder} and could not be fetched "
            f"({type(exc).__name__}: {exc}). {advice}"
        ) from None


def hub_files(repo_id: str, revision: str | None = None) -> list[str]:
    """A Hugging Face hub repo's file names from one request without retries, asked before a download: without
    network it fails at once, where huggingface_hub's downloads retry with backoff for 20-50 s first."""
    from huggingface_hub import model_info

    return [sibling.rfilename for sibling in model_info(repo_id, revision=revision).siblings or []]


class ArtifactError(ValueError):
    """An input file is missing, truncated or does not match what the stage expects."""


def check_hash_in_name(path, what: str) -> None:
    """A cached download named NAME-<sha256 prefix>.EXT (torch hub's convention) must hash to that prefix;
    otherwise a ConfigError naming the file, before anything reads it."""
    named = re.search(r"-([a-f0-9]{6,})\.", Path(path).name)
    if named is None:
        return
    found = file_hash(path)
    if not found.startswith(named.group(1)):
        raise ConfigError(
            f"{path} ({what}): its sha256 {found[:16]}… is not the {named.group(1)} its name promises; the file is "
            "damaged or not the published one. Delete it and fetch it again (or copy the published file there)"
        )


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


FILE_MODE = 0o666 & ~_umask()  # what open() would give a new file: colleagues on a shared filesystem can read it


def fsync_path(path) -> None:
    """Flush a file's (or a folder's: its entries') data to the disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(path):
    """Yield a temporary path beside `path`; only if the block succeeds, flush it to the disk, give it the
    umask's permissions and rename it onto `path`, then flush the folder's entry: a killed job or a crashed node
    never leaves a half-written or empty artifact that looks finished, and a failed write loses nothing that
    was there."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # a killed earlier write of this path left its temporary file (mkstemp's 8 random characters); Snakemake
    # runs one job per output, so none of these is live
    for stale in path.parent.glob(f".{glob.escape(path.name)}.{'?' * 8}{glob.escape(path.suffix)}"):
        log.info("removing %s, left by an earlier write that was killed", stale)
        stale.unlink(missing_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=path.suffix)
    os.close(fd)
    try:
        yield Path(tmp)
        fsync_path(tmp)
        os.chmod(tmp, FILE_MODE)
        os.replace(tmp, path)
        fsync_path(path.parent)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def extract_archive(archive, root, md5: str, source: str) -> None:
    """Extract a downloaded tar archive into `root` once it matches its published `md5` (from `source`): members
    with absolute paths, '..', links out of `root` or device files are refused (tarfile's data filter), and
    nothing is written before the checksum holds."""
    import tarfile

    found = file_hash(archive, "md5")
    if found != md5:
        raise ConfigError(
            f"{archive}: md5 {found} is not the published {md5}; it is damaged or not the archive from {source}. "
            "Delete it and download it again"
        )
    try:
        with tarfile.open(archive) as tar:
            tar.extractall(root, filter="data")
    except (tarfile.TarError, OSError) as exc:
        raise ConfigError(
            f"{archive}: cannot be extracted into {root} ({exc}); delete it and download it again"
        ) from None


@contextlib.contextmanager
def hashed_atomic_file(path):
    """`atomic_path`, opened for writing through a `HashingWriter`: the file's sha256 is remembered
    (`resmem.digests.remember`) once it is in place, so its custody record and readers in this job need not
    read it again."""
    with atomic_path(path) as tmp, open(tmp, "wb") as file, HashingWriter(file) as writer:
        yield writer
    remember(path, writer.hexdigest())


def save_npz(path, **arrays) -> None:
    """np.savez's file (uncompressed, one .npy member per array, no pickles), hashed while it is written."""
    with hashed_atomic_file(path) as f, zipfile.ZipFile(f, "w", zipfile.ZIP_STORED, allowZip64=True) as archive:
        for key, array in arrays.items():
            with archive.open(f"{key}.npy", "w", force_zip64=True) as member:
                np.lib.format.write_array(member, np.asanyarray(array), allow_pickle=False)


def remove_stale_scratch(path) -> None:
    """Delete what a killed write of `path` left beside it: the streamed writer's scratch arrays and the
    temporary file of its atomic rename (`.NAME.*`). Snakemake runs one job per output, so none is live."""
    path = Path(path)
    for stale in path.parent.glob(f".{path.name}.*"):
        log.info("removing %s, left by an earlier attempt that was killed", stale)
        stale.unlink()


def require_free_space(path, need_bytes: int, stage: str) -> None:
    """Fail before a large write, with nothing written, when the filesystem that is to hold `path` has less than
    `need_bytes` free (once an earlier killed attempt's scratch files are removed): the message names the
    stage, the bytes and the folder."""
    folder = Path(path).parent
    folder.mkdir(parents=True, exist_ok=True)
    remove_stale_scratch(path)
    free = shutil.disk_usage(folder).free
    if free < need_bytes:
        raise ArtifactError(
            f"{stage}: {Path(path).name} needs {need_bytes / 1e9:,.2f} GB of disk while it is written (the file and a "
            f"scratch copy of its largest array) but {folder} has {free / 1e9:,.2f} GB free; free space there or run "
            "the workflow where there is more (snakemake --directory)"
        )


def save_npz_streaming(path, blocks, rows: dict[str, int] | None = None) -> None:
    """Write an .npz whose arrays arrive in row blocks: `blocks` yields (key, array) pairs, the blocks of a key
    in order; `rows` gives the total row count of the keys that know it up front (a missing key, or rows=None:
    as many rows as its blocks bring, e.g. the tokens of a split, counted only once tokenized).

    A key with a known count is filled block by block into a .npy memmap beside `path` (its count is checked);
    one without is appended to a raw scratch file there with plain writes, and read back the same way, so its
    pages never count in the process's resident memory. Each is then copied into the (uncompressed) zip in
    16 MiB pieces as np.savez does, so memory stays bounded however large the arrays (an ImageNet datastore is
    ~10 GB). Each scratch file is deleted as soon as it is copied: the disk holds the datastore plus its largest
    array at most, not twice the datastore (a WikiText-103 GPT-2 datastore is ~360 GB)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_scratch(path)
    rows = rows or {}
    arrays: dict[str, np.ndarray] = {}  # the keys with a known count: their .npy memmaps
    appended: dict[str, tuple] = {}  # the others: (their open raw file, dtype, shape of one row)
    filled: dict[str, int] = {}
    try:
        for key, block in blocks:
            if key not in filled:
                scratch = path.parent / f".{path.name}.{key}.npy"
                if key in rows:
                    shape = (rows[key], *block.shape[1:])
                    arrays[key] = np.lib.format.open_memmap(scratch, mode="w+", dtype=block.dtype, shape=shape)
                    _reserve(scratch, path)
                else:
                    appended[key] = (open(scratch, "wb"), block.dtype, block.shape[1:])
                filled[key] = 0
            if key in arrays:
                arrays[key][filled[key] : filled[key] + len(block)] = block
            else:
                raw, dtype, row_shape = appended[key]
                if block.shape[1:] != row_shape:
                    raise ValueError(f"{path}: a block of {key} has rows of shape {block.shape[1:]}, not {row_shape}")
                raw.write(np.ascontiguousarray(block, dtype=dtype).data)
            filled[key] += len(block)
        short = {k: (filled[k], rows[k]) for k in arrays if filled[k] != rows[k]}
        if short:
            raise ValueError(f"{path}: rows written vs expected {short}")
        with hashed_atomic_file(path) as f, zipfile.ZipFile(f, "w", zipfile.ZIP_STORED, allowZip64=True) as archive:
            for key in filled:
                scratch = path.parent / f".{path.name}.{key}.npy"
                with archive.open(f"{key}.npy", "w", force_zip64=True) as member:
                    if key in arrays:
                        np.lib.format.write_array(member, arrays.pop(key), allow_pickle=False)
                    else:
                        raw, dtype, row_shape = appended.pop(key)
                        raw.close()
                        _copy_raw_rows(scratch, member, dtype, (filled[key], *row_shape))
                scratch.unlink()
    finally:
        arrays.clear()  # drop the memmaps and close the files before deleting them
        for raw, _, _ in appended.values():
            raw.close()
        for scratch in path.parent.glob(f".{path.name}.*.npy"):
            scratch.unlink()


def _reserve(scratch: Path, path: Path) -> None:
    """Allocate a memmapped scratch file's blocks up front: on a full disk a write into an unallocated page
    kills the process with SIGBUS, while this fails with a message before any row is written."""
    with open(scratch, "r+b") as f:
        try:
            os.posix_fallocate(f.fileno(), 0, os.fstat(f.fileno()).st_size)
        except OSError as exc:
            if exc.errno in (errno.EOPNOTSUPP, errno.EINVAL):  # a filesystem without fallocate: rows are written
                return
            raise ArtifactError(
                f"{path}: cannot reserve {os.fstat(f.fileno()).st_size / 1e9:,.2f} GB for {scratch.name} in "
                f"{path.parent} ({exc.strerror}); free space there or run the workflow where there is more"
            ) from None


def _copy_raw_rows(file, member, dtype: np.dtype, shape: tuple) -> None:
    """A .npy header for `shape` and `dtype`, then the raw C-order data of `file`, in 16 MiB pieces."""
    np.lib.format.write_array_header_1_0(
        member, {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False, "shape": shape}
    )
    with open(file, "rb") as raw:
        shutil.copyfileobj(raw, member, 16 << 20)


# What an array of an .npz may hold: booleans, integers, floats, complex numbers and fixed-width strings. Never
# objects (raw pointers in a memmap, pickles otherwise), records or raw bytes.
PLAIN_KINDS = "biufcSU"


def _checked_header(archive: zipfile.ZipFile, path, key: str) -> tuple[zipfile.ZipInfo, tuple, bool, np.dtype, int]:
    """(member, shape, fortran_order, dtype, header length) of array `key`, refused with a message naming the
    file and the array unless its dtype is plain and native and its declared size fits its own zip member."""
    info = archive.getinfo(f"{key}.npy")
    with archive.open(info) as member:
        version = np.lib.format.read_magic(member)
        read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, fortran_order, dtype = read_header(member)
        header = member.tell()
    if dtype.hasobject or dtype.kind not in PLAIN_KINDS or dtype.fields is not None:
        raise ArtifactError(
            f"{path}: array {key!r} has dtype {dtype}; only plain numbers and strings are read. The file was not "
            "written by this workflow: delete it and rerun the stage that writes it"
        )
    if not dtype.isnative:
        raise ArtifactError(f"{path}: array {key!r} has dtype {dtype.str}, not this machine's byte order; write it "
                            f"with dtype {dtype.newbyteorder('=').str}")  # fmt: skip
    declared = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if header + declared > info.file_size:
        raise ArtifactError(f"{path}: array {key!r} declares shape {shape} ({declared:,} bytes) but its member holds "
                            f"{info.file_size - header:,}; the file is truncated or damaged: delete it and rerun the "
                            "stage that writes it")  # fmt: skip
    return info, shape, fortran_order, dtype, header


def _check_inflated_size(path, key: str, info: zipfile.ZipInfo, shape: tuple, _order, dtype: np.dtype, _header) -> None:
    """A compressed array is read into memory: refused, before it is inflated, where its declared shape asks
    for more than COMPRESSED_READ_BYTES (a 1.6 MB member can declare gigabytes)."""
    declared = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if info.compress_type != zipfile.ZIP_STORED and declared > COMPRESSED_READ_BYTES:
        raise ArtifactError(f"{path}: array {key!r} is compressed and would take {declared / 2**30:,.1f} GiB of "
                            f"memory to read (more than {COMPRESSED_READ_BYTES / 2**30:.0f} GiB); write the file "
                            "with np.savez (uncompressed), which is memory-mapped instead")  # fmt: skip


def npz_shapes(path, keys, optional=()) -> dict[str, tuple[tuple, np.dtype]]:
    """(shape, dtype) of the named arrays (and of those of `optional` the file has) from their headers alone,
    compressed or not, nothing inflated beyond the header: what planning needs of a file."""
    try:
        with zipfile.ZipFile(path) as archive:
            names = {name.removesuffix(".npy") for name in archive.namelist()}
            missing = [k for k in keys if k not in names]
            if missing:
                raise ArtifactError(f"{path}: missing arrays {missing} (has {sorted(names)})")
            return {key: (shape, dtype) for key in [*keys, *(k for k in optional if k in names)]
                    for _, shape, _, dtype, _ in [_checked_header(archive, path, key)]}  # fmt: skip
    except ArtifactError:
        raise
    except Exception as exc:
        raise ArtifactError(f"{path}: cannot be read ({exc})") from exc


def npz_memmap(path, key: str) -> np.ndarray:
    """A read-only memmap of one array of an uncompressed .npz, without reading it into memory, bounded to its
    own zip member (`_checked_header`)."""
    with zipfile.ZipFile(path) as archive:
        info, shape, fortran_order, dtype, header = _checked_header(archive, path, key)
    if info.compress_type != zipfile.ZIP_STORED:
        raise ArtifactError(f"{path}: array {key!r} is compressed and cannot be memory-mapped; write it with "
                            "np.savez, not np.savez_compressed")  # fmt: skip
    with open(path, "rb") as f:
        f.seek(info.header_offset)
        local_header = f.read(30)  # the fixed part of a zip local file header
        name_length, extra_length = struct.unpack("<HH", local_header[26:30])
    offset = info.header_offset + 30 + name_length + extra_length + header
    return np.memmap(path, dtype=dtype, mode="r", shape=shape, offset=offset, order="F" if fortran_order else "C")


def load_npz(path, keys, dtypes=None, mmap: bool = False, optional=()) -> dict[str, np.ndarray]:
    """Load the named arrays (as read-only memmaps with mmap=True) and those of `optional` that the file has,
    failing with a message that names the file (and the array) when one of `keys` is missing or unreadable, or
    an array is not plain, native and within its member (`_checked_header`) or not of its dtype in `dtypes`."""
    try:
        with np.load(path, allow_pickle=False) as data, zipfile.ZipFile(path) as archive:
            missing = [k for k in keys if k not in data.files]
            if missing:
                raise ArtifactError(
                    f"{path}: missing arrays {missing} (has {sorted(data.files)}); rerun the stage that writes it"
                )
            present = [*keys, *(k for k in optional if k in data.files)]
            arrays = {}
            for key in present:
                if not mmap:  # (npz_memmap checks its own header)
                    _check_inflated_size(path, key, *_checked_header(archive, path, key))
                arrays[key] = npz_memmap(path, key) if mmap else data[key]
    except ArtifactError:
        raise
    except Exception as exc:  # zipfile/format/IO errors of a truncated or foreign file
        raise ArtifactError(f"{path}: cannot be read ({exc}); delete it and rerun the stage that writes it") from exc
    for key, expected in (dtypes or {}).items():
        if key in arrays and arrays[key].dtype != np.dtype(expected):
            raise ArtifactError(f"{path}: array {key!r} has dtype {arrays[key].dtype}, expected {np.dtype(expected)}")
    return arrays


def write_text(path, text: str) -> None:
    with atomic_path(path) as tmp:
        Path(tmp).write_text(text)


def write_json(path, obj) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=_json_default) + "\n")


def _json_default(obj):
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    return str(obj)


def write_csv(path, frame) -> None:
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, index=False)
