"""README.md and docs/: short where it must be, built strictly as a site, and every config, command, file, Python
name and snippet they show exists and works."""

import copy
import functools
import importlib
import importlib.util
import re
import shlex
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import tomllib
import yaml

from resmem import config as config_module
from resmem.vision.pretrained import check_timm_names
from tests.conftest import REPO

PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
FENCE = re.compile(r"^( *)```(\w*)\n(.*?)^\1```", flags=re.S | re.M)
INLINE = re.compile(r"(?<!`)`([^`\n]+)`(?!`)")
TOP_FOLDERS = ("bench/", "config/", "docs/", "envs/", "profiles/", "resmem/", "tests/", "workflow/", ".ci/")
USER_FILES = re.compile(r"^(my[\w.-]*\.yaml|CONFIG|FILE|DIR|data/.*|results/.*)$")  # what a reader supplies


def short_id(value) -> str:
    return value if isinstance(value, str) and len(value) < 40 else ""


def blocks(language: str):
    """(page name, text) of every fenced block of `language` in README.md and docs/*.md."""
    found = [(page.name, lang, body) for page in PAGES for _, lang, body in FENCE.findall(page.read_text())]
    return [(name, textwrap.dedent(body)) for name, lang, body in found if lang == language]


def prose(page) -> str:
    """A page without its fenced blocks."""
    return FENCE.sub("", page.read_text())


def test_readme_is_a_page_a_newcomer_reads_in_minutes():
    text = (REPO / "README.md").read_text()
    assert len(text.splitlines()) <= 200, len(text.splitlines())
    written = re.sub(r"<!-- table: .*?<!-- /table -->", "", text, flags=re.S)  # rendered blocks aside
    assert max(len(line) for line in written.splitlines() if not line.startswith("|")) <= 120
    assert "DeepNet" in text


def test_the_docs_build_as_a_site_without_warnings(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    api = (tmp_path / "site" / "api" / "index.html").read_text()
    for name in ("estimator.ResMem", "engine.sweep_correct", "lm.tokens.sweep_table", "knn.build_index"):
        assert f'id="resmem.{name}"' in api, name
    nav = yaml.safe_load((REPO / "mkdocs.yml").read_text())["nav"]
    listed = {next(iter(entry.values())) for entry in nav}
    assert listed == {page.name for page in PAGES if page.parent.name == "docs"}, "every page in the nav, once"


@pytest.mark.parametrize("page, snippet", blocks("yaml"), ids=short_id)
def test_every_yaml_snippet_is_a_valid_config(page, snippet):
    config = yaml.safe_load(snippet)
    assert isinstance(config, dict), f"{page}: a YAML snippet must be a whole config"
    validated = config_module.validate(copy.deepcopy(config))
    config_module.check_names(validated)
    check_timm_names(validated)  # timm model names exist, offline


@functools.cache
def help_text(*command: str) -> str:
    proc = subprocess.run([*command, "--help"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"{command} --help failed: {proc.stderr[-2000:]}"
    return proc.stdout


def check_command(words: list[str], where: str) -> None:
    """The program, module or script of a shell command exists, and so do its options and the repository files it
    names."""
    program = words[0].removeprefix(".venv/bin/")
    args = words[1:]
    if program in ("python", "python3"):
        if args[:1] == ["-m"]:
            module, args = args[1], args[2:]
            assert importlib.util.find_spec(module) is not None, f"{where}: no module {module}"
            command = (sys.executable, "-m", module)
        else:
            script, args = args[0], args[1:]
            assert (REPO / script).is_file(), f"{where}: no script {script}"
            command = (sys.executable, str(REPO / script))
        if command[-1].startswith("resmem.") or command[-1].endswith(".py"):  # ours answer --help (not venv, pip)
            for option in (a.split("=")[0] for a in args if a.startswith("--")):
                assert option in help_text(*command), f"{where}: {' '.join(command[1:])} has no option {option}"
    elif program == "snakemake":
        for option in (a.split("=")[0] for a in args if a.startswith("--")):
            assert option in help_text(sys.executable, "-m", "snakemake"), f"{where}: snakemake has no {option}"
    elif program == "pip":
        extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
        for arg in args:
            for extra in re.findall(r"\.\[(\w+)\]", arg):
                assert extra in extras, f"{where}: no extra {extra}"
    elif program not in ("mkdocs", "export", "bash"):
        raise AssertionError(f"{where}: a command this test does not know: {' '.join(words)}")
    for arg in args:
        if arg.startswith(TOP_FOLDERS) and not USER_FILES.match(arg):
            assert list(REPO.glob(arg)), f"{where}: {arg} does not exist"


def shell_commands(text: str):
    """Each simple command (split at &&, ; and |) of a shell text, as words, comments and variables removed."""
    for line in text.splitlines():
        line = line.split(" #")[0].strip()
        if not line or line.startswith("#"):
            continue
        for part in re.split(r"&&|;|\|", line):
            words = shlex.split(part)
            while words and "=" in words[0] and not words[0].startswith("-"):
                words = words[1:]  # VAR=value prefixes
            if words:
                yield words


def commands():
    """(where, words) of every command in a shell block, and of every inline `snakemake …` or `python …` span."""
    found = [(f"{page}: {' '.join(w)}", w) for page, body in blocks("bash") for w in shell_commands(body)]
    for page in PAGES:
        for span in INLINE.findall(prose(page)):
            if re.match(r"(\.venv/bin/)?(snakemake|python3?) ", span):
                found += [(f"{page.name}: {span}", w) for w in shell_commands(span)]
    return found


@pytest.mark.parametrize("where, words", commands(), ids=lambda v: v if isinstance(v, str) else "")
def test_every_command_in_the_docs_exists(where, words):
    check_command(words, where)


def test_every_repository_path_and_python_name_in_the_docs_exists():
    missing = []
    for page in PAGES:
        for span in INLINE.findall(prose(page)):
            name = span.split("(")[0].split(" ")[0].rstrip(".,:")
            if name.startswith(TOP_FOLDERS) and not USER_FILES.match(name) and "<" not in name:
                if not list(REPO.glob(name.replace("…", "*"))):
                    missing.append(f"{page.name}: {name}")
            elif re.fullmatch(r"resmem(\.\w+)+", name) and not python_name_exists(name):
                missing.append(f"{page.name}: {name}")
    assert not missing, missing


def python_name_exists(dotted: str) -> bool:
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        for attr in parts[cut:]:
            if not hasattr(obj, attr):
                return False
            obj = getattr(obj, attr)
        return True
    return False


def heading_anchors(page) -> set[str]:
    """The anchors mkdocs (and GitHub) give the page's headings."""
    headings = re.findall(r"^#+ (.+)$", prose(page), flags=re.M)
    return {re.sub(r"[\s]+", "-", re.sub(r"[^\w\s-]", "", h.strip().lower().replace("`", ""))) for h in headings}


def test_every_link_resolves():
    broken = []
    for page in PAGES:
        for target in re.findall(r"\]\(([^)\s]+)\)", prose(page)):
            if re.match(r"[a-z]+://", target):
                continue
            path, _, anchor = target.partition("#")
            file = (page.parent / path).resolve() if path else page
            if not file.exists():
                broken.append(f"{page.name}: {target}")
            elif anchor and file.suffix == ".md" and anchor not in heading_anchors(file):
                broken.append(f"{page.name}: {target} (no such heading)")
    assert not broken, broken


def snippet_namespace() -> dict:
    """Small arrays under the names the Python snippets use for a reader's own data."""
    rng = np.random.default_rng(0)
    n, q, d, classes, vocab = 200, 50, 8, 5, 32
    train_y, test_y = rng.integers(0, classes, n), rng.integers(0, classes, q)
    keys = rng.standard_normal((n, d)).astype(np.float16)
    return {
        "train_emb": rng.standard_normal((n, d)).astype(np.float32),
        "train_logits": rng.standard_normal((n, classes)),
        "train_y": train_y,
        "test_emb": rng.standard_normal((q, d)).astype(np.float32),
        "test_logits": rng.standard_normal((q, classes)),
        "test_y": test_y,
        "keys": keys,
        "next": rng.integers(0, vocab, n),
        "val_emb": rng.standard_normal((q, d)).astype(np.float32),
        "val_logits": rng.standard_normal((q, classes)),
        "val_y": rng.integers(0, classes, q),
        "val_h": rng.standard_normal((q, d)).astype(np.float32),
        "val_next": rng.integers(0, vocab, q),
        "test_h": rng.standard_normal((q, d)).astype(np.float32),
        "W": rng.standard_normal((vocab, d)).astype(np.float32),
        "b": np.zeros(vocab, np.float32),
    }


@pytest.mark.parametrize(
    "page, snippet", blocks("python"), ids=lambda v: v if isinstance(v, str) and len(v) < 40 else ""
)
def test_every_python_snippet_runs(page, snippet, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # what a snippet saves (a model folder) lands here, not in the checkout
    namespace = snippet_namespace()
    exec(compile(snippet, page, "exec"), namespace)  # noqa: S102 - the docs' own snippets
    if "pred" in namespace:
        assert namespace["pred"].shape == (len(namespace["test_emb"]),)
    if "table" in namespace:  # your-data.md's LM snippet: 2 splits × (base + 3 k × 3 σ × 1 T + 3 k × 3 τ × 2 λ)
        table = namespace["table"]
        assert set(table.method) == {"base", "resmem", "knnlm"} and len(table) == 2 * (1 + 3 * 3 + 3 * 3 * 2)


@pytest.mark.parametrize(
    "command",
    [
        "snakemake --cores all --no-such-option",
        "python -m resmem.no_such_module config/config.yaml",
        "python bench/bench_sweep.py --no-such-option",
        "snakemake --configfile config/paper/no_such_study.yaml",
        "pip install -e .[no_such_extra]",
    ],
)
def test_the_command_check_refuses_what_does_not_exist(command):
    with pytest.raises(AssertionError):
        check_command(shlex.split(command), "here")


def first_table_header(summary) -> list[str]:
    """The header and alignment rows of the first table of a summary.md."""
    lines = [line for line in summary.read_text().splitlines() if line.startswith("|")]
    return lines[:2]


@pytest.mark.parametrize(
    "kept, run, experiment",
    [("digits", "folder_run", "two_seeds"), ("stdlib_lm", "lm_run", "lm_smoke"),
     ("linear_plus_sines", "smoke_run", "smoke_regression")],
)  # fmt: skip
def test_the_results_in_the_readme_have_the_columns_the_code_writes(
    kept, run, experiment, folder_run, lm_run, smoke_run
):
    """README's tables are docs/results/<experiment>/summary.md of a run of the default: the workflow today writes the
    same columns (a run with several seeds for images, as the default has)."""
    runs = {"folder_run": folder_run, "lm_run": lm_run, "smoke_run": smoke_run}  # named, so they run in the background
    written = runs[run]["workdir"] / "results" / experiment / "summary.md"
    assert first_table_header(REPO / "docs" / "results" / kept / "summary.md") == first_table_header(written)
