"""The chain of custody (resmem.custody) and `python -m resmem.verify` on small results folders built by hand:
each edit, swap, stale file and deletion is named, and an untouched folder (or a copy of it) passes."""

import hashlib
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from resmem import custody
from resmem.io import ArtifactError
from resmem.verify import main as verify_main

RUN_A, RUN_B = "results/exp/m/seed0", "results/exp/m/seed1"


def write_job(rule, inputs, outputs: dict[str, bytes]):
    """A job of `rule` that reads `inputs` and writes `outputs` {path: bytes}, inside custody.job."""
    with custody.job(inputs, outputs, rule):
        for path, data in outputs.items():
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            Path(path).write_bytes(data)


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    """A working directory with a user's input and, for two runs, embed → index (+ rows) → neighbors."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "user.npz").write_bytes(b"the user's embeddings")
    for run, seed in ((RUN_A, b"0"), (RUN_B, b"1")):
        write_job("embed", [str(tmp_path / "user.npz")], {f"{run}/embeddings.npz": b"embeddings " + seed})
        write_job("index", [f"{run}/embeddings.npz"], {f"{run}/index.faiss": b"index " + seed,
                                                       f"{run}/rows.npz": b"rows " + seed})  # fmt: skip
        write_job("neighbors", [f"{run}/index.faiss", f"{run}/rows.npz", f"{run}/embeddings.npz"],
                  {f"{run}/neighbors.npz": b"neighbors " + seed})  # fmt: skip
    (tmp_path / RUN_A / "logs").mkdir()
    (tmp_path / RUN_A / "logs" / "index.log").write_text("a log is no artifact")
    return tmp_path


def neighbors_inputs(run):
    return [f"{run}/index.faiss", f"{run}/rows.npz", f"{run}/embeddings.npz"]


def test_records_hold_each_file_and_input_digest_as_sha256sum_computes_it(workdir):
    record = json.loads((workdir / RUN_A / "index.faiss.custody.json").read_text())
    assert record["path"] == f"{RUN_A}/index.faiss" and record["rule"] == "index" and record["bytes"] == 7
    assert record["sha256"] == hashlib.sha256(b"index 0").hexdigest()
    embeddings = workdir / RUN_A / "embeddings.npz"
    by_sha256sum = subprocess.run(["sha256sum", embeddings], capture_output=True, text=True).stdout.split()[0]
    assert record["inputs"] == {f"{RUN_A}/embeddings.npz": {"bytes": 12, "sha256": by_sha256sum}}
    user = json.loads((embeddings.parent / "embeddings.npz.custody.json").read_text())["inputs"]
    assert user == {
        str(workdir / "user.npz"): {"bytes": 21, "sha256": hashlib.sha256(b"the user's embeddings").hexdigest()}
    }


def test_an_untouched_chain_passes_and_lists_every_artifact_down_to_the_users_input(workdir):
    assert set(custody.check_inputs(neighbors_inputs(RUN_A))) == set(neighbors_inputs(RUN_A))
    chain = custody.chain([f"{RUN_A}/neighbors.npz"])
    assert [(c["artifact"], c["rule"]) for c in chain] == [
        (str(workdir / "user.npz"), None),
        (f"{RUN_A}/embeddings.npz", "embed"),
        (f"{RUN_A}/index.faiss", "index"),
        (f"{RUN_A}/neighbors.npz", "neighbors"),
        (f"{RUN_A}/rows.npz", "index"),
    ]
    assert chain[3]["sha256"] == hashlib.sha256(b"neighbors 0").hexdigest()


def test_an_edit_of_the_same_size_is_named_with_the_command_that_rewrites_it(workdir):
    (workdir / RUN_A / "rows.npz").write_bytes(b"rows 9")
    rows = f"{RUN_A}/rows.npz"
    with pytest.raises(ArtifactError, match=rf"^{rows} is not the file its rule wrote \(sha256 "
                       rf"[0-9a-f]{{16}}… where rule index wrote [0-9a-f]{{16}}…\): it was edited or replaced since; "
                       rf"rewrite it and what was computed from it: snakemake --forcerun {rows}$"):  # fmt: skip
        custody.check_inputs(neighbors_inputs(RUN_A))


def test_an_edit_that_changes_the_size_is_named_by_its_size(workdir):
    (workdir / RUN_A / "embeddings.npz").write_bytes(b"longer embeddings")
    with pytest.raises(ArtifactError, match=r"embeddings.npz is not the file its rule wrote \(17 bytes where rule "
                       r"embed wrote 12\)"):  # fmt: skip
        custody.check_inputs(neighbors_inputs(RUN_A))


def test_an_index_and_rows_swapped_in_with_their_records_from_another_run_are_named(workdir):
    for name in ("index.faiss", "rows.npz"):
        for suffix in ("", ".custody.json"):
            shutil.copy(workdir / RUN_B / f"{name}{suffix}", workdir / RUN_A / f"{name}{suffix}")
    with pytest.raises(ArtifactError, match=rf"^{RUN_A}/index.faiss: its record says rule index wrote it as "
                       rf"{RUN_B}/index.faiss; it was moved or swapped in from there \(with its record\)"):  # fmt: skip
        custody.check_inputs(neighbors_inputs(RUN_A))


def test_an_input_computed_from_another_version_of_a_fellow_input_is_stale(workdir):
    # embed rerun alone (as `snakemake --touch` or a copied folder would leave it): index.faiss and rows.npz
    # still come from the old embeddings, which neighbors reads beside them
    write_job("embed", [str(workdir / "user.npz")], {f"{RUN_A}/embeddings.npz": b"embeddings 2"})
    with pytest.raises(ArtifactError, match=rf"^{RUN_A}/index.faiss was computed from another "
                       rf"{RUN_A}/embeddings.npz than the one here \(sha256 [0-9a-f]{{16}}…, now [0-9a-f]{{16}}…\): "
                       rf"it is stale"):  # fmt: skip
        custody.check_inputs(neighbors_inputs(RUN_A))


def test_a_missing_record_a_broken_record_and_a_failed_job(workdir):
    (workdir / RUN_A / "rows.npz.custody.json").unlink()
    with pytest.raises(ArtifactError, match=r"rows.npz has no custody record \(rows.npz.custody.json\)"):
        custody.check_inputs(neighbors_inputs(RUN_A))
    (workdir / RUN_A / "rows.npz.custody.json").write_text("{not json")
    with pytest.raises(ArtifactError, match=r"rows.npz.custody.json: not a custody record \(JSONDecodeError"):
        custody.check_inputs(neighbors_inputs(RUN_A))
    with pytest.raises(RuntimeError, match="the stage failed"):
        with custody.job(neighbors_inputs(RUN_B), [f"{RUN_B}/neighbors.npz"], "neighbors"):
            raise RuntimeError("the stage failed")
    assert not (workdir / RUN_B / "neighbors.npz.custody.json").exists()  # the earlier record went with the job


def verify(folder, capsys):
    status = verify_main([str(folder)])
    return status, capsys.readouterr().out


def test_verify_passes_an_untouched_folder_its_copy_and_one_experiment(workdir, capsys):
    for folder in (workdir / "results", workdir / "results" / "exp"):
        assert verify(folder, capsys) == (0, "8 artifacts match their records, 0 problems\n")
    shutil.copytree(workdir / "results", workdir / "theirs")
    (workdir / "user.npz").unlink()  # the user's input is not on this machine
    status, out = verify(workdir / "theirs", capsys)
    assert (
        status == 0
        and out.splitlines()[-1] == "8 artifacts match their records, 0 problems, 1 inputs of the user's not checked"
    )
    assert f"not checked: {workdir / 'user.npz'} (read by 2 artifacts; not on this machine)" in out


@pytest.mark.parametrize(
    "edit, problem",
    [
        (
            lambda w: (w / RUN_A / "neighbors.npz").write_bytes(b"neighbors 7"),
            r"neighbors.npz is not the file its rule wrote",
        ),
        (
            lambda w: (w / RUN_A / "index.faiss").unlink(),
            r"index.faiss: recorded \(index.faiss.custody.json\) but missing",
        ),
        (
            lambda w: [shutil.copy(w / RUN_B / n, w / RUN_A / n) for n in ("rows.npz", "rows.npz.custody.json")],
            rf"rows.npz: its record says rule index wrote it as {RUN_B}/rows.npz",
        ),
        (
            lambda w: write_job("embed", [str(w / "user.npz")], {f"{RUN_A}/embeddings.npz": b"embeddings 2"}),
            r"index.faiss is stale: what it was computed from changed since: .*embeddings.npz \(sha256 ",
        ),
        (lambda w: (w / RUN_A / "notes.csv").write_text("a,b\n"), r"notes.csv has no custody record"),
        (
            lambda w: (w / "user.npz").write_bytes(b"other embeddings, same length"),
            r"embeddings.npz is stale: what it was "
            r"computed from changed since: .*user.npz",
        ),
    ],
    ids=["edited", "deleted", "swapped", "stale", "unrecorded", "user input changed"],
)
def test_verify_names_each_edit_and_exits_1(workdir, capsys, edit, problem):
    edit(workdir)
    status, out = verify(workdir / "results", capsys)
    assert status == 1
    mismatches = [line for line in out.splitlines() if line.startswith("MISMATCH ")]
    assert len(mismatches) >= 1 and any(re.search(problem, line) for line in mismatches), out


def test_verify_as_a_command(workdir):
    ok = subprocess.run([sys.executable, "-m", "resmem.verify", "results"], capture_output=True, text=True, cwd=workdir)
    assert ok.returncode == 0 and ok.stdout.endswith("8 artifacts match their records, 0 problems\n")
    missing = subprocess.run([sys.executable, "-m", "resmem.verify", "nowhere"], capture_output=True, text=True,
                             cwd=workdir)  # fmt: skip
    assert missing.returncode == 2 and "nowhere: no such folder" in missing.stderr


def test_the_smoke_run_verifies_and_its_provenance_lists_the_chain_as_hashlib_hashes_it(smoke_run, capsys):
    results = smoke_run["results"]
    artifacts = [p for p in results.rglob("*") if p.is_file() and not p.name.endswith(".custody.json")
                 and not {"logs", "benchmarks"} & set(p.relative_to(results).parts)]  # fmt: skip
    assert verify(results, capsys) == (0, f"{len(artifacts)} artifacts match their records, 0 problems\n")
    chain = json.loads((results / "provenance.json").read_text())["chain"]
    assert {entry["rule"] for entry in chain} == {"split", "train", "embed", "index", "neighbors", "sweep", "select",
                                                  "predict"}  # fmt: skip
    for entry in chain:
        path = smoke_run["workdir"] / entry["artifact"]
        assert entry["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest(), entry
    runs = {str(p.relative_to(smoke_run["workdir"])) for p in results.glob("*/frac*/seed*/neighbors.npz")}
    assert len(runs) == 4 and runs <= {entry["artifact"] for entry in chain}


def test_an_edited_neighbors_file_and_a_swapped_index_stop_the_next_job_and_fail_verify(smoke_run, tmp_path, capsys):
    """neighbors.npz of one run edited with its shape kept (each query's neighbours reversed), and another run's
    index.faiss and rows.npz replaced, records and all, by those of a run trained on half the data: the sweep and
    the search that read them stop, naming the file, and `resmem.verify` names both."""
    import numpy as np

    from tests.conftest import snakemake

    workdir = tmp_path / "copy"
    shutil.copytree(smoke_run["workdir"], workdir)
    edited, swapped, donor = (workdir / "results" / "smoke" / run for run in (
        "cnn_w1/frac1/seed0", "cnn_w4/frac1/seed0", "cnn_w4/frac0.5/seed0"))  # fmt: skip
    with np.load(edited / "neighbors.npz") as neighbors:
        arrays = dict(neighbors)
    np.savez(edited / "neighbors.npz", **{**arrays, "test_idx": arrays["test_idx"][:, ::-1]})
    for name in ("index.faiss", "rows.npz", "index.faiss.custody.json", "rows.npz.custody.json"):
        shutil.copy(donor / name, swapped / name)
    status, out = verify(workdir / "results", capsys)
    assert status == 1
    assert re.search(r"MISMATCH .*cnn_w1/frac1/seed0/neighbors.npz is not the file its rule wrote", out), out
    assert re.search(r"MISMATCH .*cnn_w4/frac1/seed0/index.faiss: its record says rule index wrote it as "
                     r"results/smoke/cnn_w4/frac0.5/seed0/index.faiss", out), out  # fmt: skip
    targets = ["results/smoke/cnn_w1/frac1/seed0/sweep.csv", "results/smoke/cnn_w4/frac1/seed0/neighbors.npz"]
    proc = snakemake(workdir, *targets, "--keep-going", "--forcerun", *targets, configfile=smoke_run["config"],
                     check=False)  # fmt: skip
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert re.search(r"ERROR: results/smoke/cnn_w1/frac1/seed0/neighbors.npz is not the file its rule wrote", output)
    assert "ERROR: results/smoke/cnn_w4/frac1/seed0/index.faiss: its record says rule index wrote it as " in output
    assert "Error in rule sweep" in output and "Error in rule neighbors" in output


def test_the_published_provenance_lists_the_chain_its_summary_was_computed_from():
    """docs/results/ holds the default run's provenance: each lists its chain, every entry an artifact of the
    results folder with the rule that wrote it and its sha256."""
    from tests.conftest import REPO

    published = sorted((REPO / "docs" / "results").glob("*/provenance.json"))
    assert [p.parent.name for p in published] == ["digits", "linear_plus_sines", "stdlib_lm"]
    for path in published:
        chain = json.loads(path.read_text())["chain"]
        assert chain, path
        for entry in chain:
            assert entry["artifact"].startswith(f"results/{path.parent.name}/") and entry["rule"], entry
            assert re.fullmatch(r"[0-9a-f]{64}", entry["sha256"]), entry
