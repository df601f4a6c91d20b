"""The docs' benchmark tables are rendered from the benchmarks' own JSON (bench/render_tables.py), never typed: the
committed pages equal what the committed JSON renders, the renderer writes exactly the expected table from a
small hand-written result, and a block that differs is reported by name. No benchmark runs here."""

import json
import subprocess
import sys

import pytest

from tests.conftest import REPO

sys.path.insert(0, str(REPO / "bench"))  # the bench scripts import each other as top-level modules

import render_tables  # noqa: E402

REPORT = {
    "bench": "bench_image_cache",
    "date": "2026-12-01 10:00 UTC",
    "commit": "0123456789abcdef0123456789abcdef01234567",
    "uncommitted_changes": False,
    "command": "python bench/bench_image_cache.py --augment crop_flip",
    "arguments": {"quick": False, "epochs": 3, "workers": 2, "width": 4, "augment": "crop_flip", "out": None},
    "machine": {"cpu": "Test CPU 9000", "cores": 4, "avx512": False, "threads": 4, "torch_threads": 4,
                "faiss_threads": 4, "device": "cpu", "gpu": None, "faiss_gpus": 0, "matmul_gflops": 123.4,
                "versions": {"torch": "2.0.0", "faiss": "1.9.0 (faiss-cpu)", "numpy": "2.1.0", "python": "3.11.7"}},
    "results": {"images": 1000, "side": 32, "classes": 10, "width": 4, "batch": 128, "workers": 2, "epochs": 3,
                "augment": "crop_flip", "decode_seconds": 2.0, "streamed_epoch_seconds": 6.0,
                "decoded_epoch_seconds": 1.5, "same_pixels": None},
}  # fmt: skip

EXPECTED = """\
1,000 JPEGs of 32 px in 10 class folders, small_cnn width 4, batch 128, 2 decoding processes on the streamed side. \
Seconds of wall time: decoding the folder once into memory (one run), and one SGD epoch over every image streamed \
from the files (each epoch decodes and augments every file) and served decoded from memory (tensor-op \
augmentation), each the fastest of 3 epochs.

| augment | decode once s | images/s | epoch, streamed s | epoch, decoded s | speed-up per epoch | \
same pixels, same order |
|---|---:|---:|---:|---:|---:|---|
| `crop_flip` | 2.0 | 500 | 6.00 | 1.50 | 4.0× | – (random augmentation) |
| `none` | not run yet | | | | | |

Machine (crop_flip): Test CPU 9000, 4 cores; 4 torch threads, 4 faiss threads; float32 matmul 123 GFLOP/s on cpu; \
torch 2.0.0, faiss 1.9.0, numpy 2.1.0, python 3.11.7; 2026-12-01 10:00 UTC, commit 0123456789; \
`python bench/bench_image_cache.py --augment crop_flip`.

none: not run yet (`.venv/bin/python bench/bench_image_cache.py --augment none` writes \
bench/results/bench_image_cache_none.json).
"""


@pytest.fixture
def results(tmp_path):
    folder = tmp_path / "results"
    folder.mkdir()
    (folder / "bench_image_cache_crop_flip.json").write_text(json.dumps(REPORT))
    return folder


def test_the_committed_docs_equal_what_the_committed_json_renders():
    proc = subprocess.run([sys.executable, "bench/render_tables.py", "--check"], cwd=REPO, capture_output=True,
                          text=True)  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    pages = [p.name for p in (REPO / "docs").glob("*.md") if "<!-- table: " in p.read_text()]
    assert {"performance.md", "scale.md"} <= set(pages)


def test_a_hand_written_result_renders_to_the_expected_table(results):
    assert render_tables.render_block("bench_image_cache", results) == EXPECTED


def test_a_benchmark_without_results_says_so_instead_of_inventing_figures(results):
    assert render_tables.render_block("bench_datastore", results) == (
        "No results yet: bench/results/bench_datastore.json not written. Run "
        "`.venv/bin/python bench/bench_datastore.py`; then `.venv/bin/python bench/render_tables.py` renders them "
        "here.\n"
    )


def test_a_stale_block_is_named_and_rewritten(results, tmp_path, capsys):
    doc = tmp_path / "page.md"
    fresh = "<!-- table: bench_datastore -->\n\n" + render_tables.render_block("bench_datastore", results) + "\n"
    stale = "<!-- table: bench_image_cache -->\n\n| augment | epoch |\n|---|---|\n| none | 1.0 |\n\n<!-- /table -->\n"
    text = f"# A page\n\n{fresh}<!-- /table -->\n\nBetween the blocks.\n\n{stale}"
    doc.write_text(text)
    assert render_tables.main(["--check", "--results", str(results), str(doc)]) == 1
    out = capsys.readouterr().out
    assert "table block bench_image_cache is stale" in out and "bench_datastore" not in out
    assert doc.read_text() == text, "--check changes nothing"
    assert render_tables.main(["--results", str(results), str(doc)]) == 0
    assert render_tables.main(["--check", "--results", str(results), str(doc)]) == 0
    assert EXPECTED in doc.read_text() and "Between the blocks." in doc.read_text()


def test_an_unknown_or_unclosed_block_is_an_error(results, tmp_path, capsys):
    doc = tmp_path / "page.md"
    doc.write_text("<!-- table: bench_nothing -->\nkept\n<!-- /table -->\n")
    assert render_tables.main(["--results", str(results), str(doc)]) == 1
    assert "table block bench_nothing is unknown" in capsys.readouterr().out
    assert doc.read_text() == "<!-- table: bench_nothing -->\nkept\n<!-- /table -->\n"
    with pytest.raises(SystemExit, match="without its closing"):
        render_tables.rewrite("<!-- table: bench_sweep -->\nno end\n", results)
