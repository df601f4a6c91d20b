"""Install metadata, conda environments, README, CI and lint agree with each other."""

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
import tomllib
import yaml

from resmem import provenance
from tests.conftest import REPO, SNAKEMAKE

# pip name -> conda-forge name, where they differ; faiss-gpu (Linux x86_64 wheel) is faiss-cpu on conda-forge.
CONDA_NAMES = {"torch": "pytorch", "faiss-gpu": "faiss-cpu"}


def requirement_name(spec: str) -> str:
    return re.split(r"[\s<>=!~;\[]", spec.strip(), maxsplit=1)[0].lower()


def test_envs_name_the_same_packages_as_pyproject():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    pip_names = {CONDA_NAMES.get(requirement_name(d), requirement_name(d)) for d in project["dependencies"]}
    for env_file in sorted((REPO / "envs").glob("*.yaml")):
        env = yaml.safe_load(env_file.read_text())
        conda_names = {requirement_name(d) for d in env["dependencies"] if isinstance(d, str)} - {"python"}
        assert conda_names == pip_names, env_file.name


def test_faiss_is_chosen_by_platform_never_both():
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    gpu = [d for d in deps if d.startswith("faiss-gpu")]
    cpu = [d for d in deps if d.startswith("faiss-cpu")]
    assert len(gpu) == len(cpu) == 1
    assert "platform_machine == 'x86_64'" in gpu[0] and "platform_machine != 'x86_64'" in cpu[0]


def readme_commands():
    return re.findall(r"```(?:bash|sh)\n(.*?)```", (REPO / "README.md").read_text(), flags=re.S)


def test_ci_runs_the_readme_test_command():
    test_command = next(c.strip() for c in readme_commands() if "pytest" in c)
    ci_lines = [line.strip() for line in (REPO / ".ci" / "run").read_text().splitlines()]
    assert test_command in ci_lines


def test_snakemake_lint_is_clean():
    proc = subprocess.run(
        [*SNAKEMAKE, "--lint", "--configfile", "config/smoke.yaml"], cwd=REPO, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Congratulations, your workflow is in a good condition" in proc.stdout + proc.stderr


def test_snakefmt_is_clean():
    proc = subprocess.run([sys.executable, "-m", "snakefmt", "--check", "."], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_ruff_is_clean():
    proc = subprocess.run([sys.executable, "-m", "ruff", "check", "."], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_source_hash_follows_the_source_not_its_location(tmp_path):
    package = tmp_path / "a" / "pkg"
    (package / "sub").mkdir(parents=True)
    (package / "__init__.py").write_text('"""A fake package."""\n')
    (package / "sub" / "__init__.py").write_text("")
    (package / "sub" / "mod.py").write_text("X = 1\n")
    (package / "config.schema.yaml").write_text("type: object\n")
    before = provenance.source_hash(package)
    moved = shutil.copytree(package, tmp_path / "b" / "elsewhere")
    assert len(before) == 64 and provenance.source_hash(moved) == before
    (package / "__pycache__").mkdir()
    (package / "__pycache__" / "mod.cpython-311.pyc").write_bytes(b"\x00compiled")
    (package / "notes.txt").write_text("neither .py nor .yaml")
    assert provenance.source_hash(package) == before
    (package / "sub" / "mod.py").write_text("X = 2\n")  # one byte
    assert provenance.source_hash(package) != before
    (package / "sub" / "mod.py").write_text("X = 1\n")
    (package / "config.schema.yaml").write_text("type: array\n")
    assert provenance.source_hash(package) != before
    assert provenance.source_hash() == provenance.source_hash(REPO / "resmem")  # default: the package imported here


# The child reads resmem from SITE, not from the checkout: -S skips the .pth of the editable install, and cwd is
# elsewhere. It reports what it found as JSON.
INSTALLED_CHILD = """
import json, sys
import resmem, resmem.config, resmem.provenance
report = {"file": resmem.__file__, "schema": str(resmem.config.SCHEMA), "hash": resmem.provenance.source_hash()}
report["experiments"] = sorted(resmem.config.load(sys.argv[1])["experiments"])
try:
    resmem.config.load(sys.argv[2])
except resmem.config.ConfigError as exc:
    report["error"] = str(exc)
print(json.dumps(report))
"""


@pytest.mark.skipif(
    importlib.util.find_spec("pip") is None or importlib.util.find_spec("setuptools") is None,
    reason="building the wheel needs pip and setuptools in this interpreter (pip wheel --no-build-isolation)",
)
def test_installed_wheel_ships_the_schema_and_validates_configs(tmp_path):
    # DIST_EXTRA_CONFIG (pypa/distutils#177) sends build/ and the egg-info to tmp_path, not into the checkout,
    # where a stale build/lib could also slip removed modules into the wheel.
    extra_config = tmp_path / "build.cfg"
    extra_config.write_text(f"[build]\nbuild_base = {tmp_path / 'build'}\n[egg_info]\negg_base = {tmp_path}\n")
    env = {**os.environ, "DIST_EXTRA_CONFIG": str(extra_config), "PIP_DISABLE_PIP_VERSION_CHECK": "1"}

    def pip(*args):
        proc = subprocess.run([sys.executable, "-m", "pip", "-q", *args], cwd=tmp_path, env=env, capture_output=True)
        assert proc.returncode == 0, proc.stdout.decode() + proc.stderr.decode()

    pip("wheel", "--no-deps", "--no-build-isolation", "--no-index", "-w", tmp_path / "wheels", REPO)
    (wheel,) = (tmp_path / "wheels").glob("resmem-*.whl")
    pip("install", "--no-deps", "--no-index", "--target", tmp_path / "site", wheel)
    bad = {"experiments": {"x": {"models": {"m": {"arch": "small_cnn"}}, "train": {"learning_rate": 0.1}}}}
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(bad))
    paths = sysconfig.get_paths()  # the environment's site-packages, for numpy, snakemake, ...
    site_path = os.pathsep.join([str(tmp_path / "site"), paths["purelib"], paths["platlib"]])
    proc = subprocess.run(
        [sys.executable, "-S", "-c", INSTALLED_CHILD, REPO / "config" / "smoke.yaml", tmp_path / "bad.yaml"],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": site_path},
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = json.loads(proc.stdout)
    installed = (tmp_path / "site" / "resmem").resolve()
    assert Path(report["file"]).resolve() == installed / "__init__.py"
    assert Path(report["schema"]).resolve() == installed / "config.schema.yaml"
    assert (installed / "py.typed").is_file()  # PEP 561: type checkers read the package's annotations
    assert report["experiments"] == ["smoke"]
    assert "experiments.x.train" in report["error"] and "'learning_rate' was unexpected" in report["error"]
    # Every source file of the checkout's package, subpackages and schema included, is in the wheel.
    assert report["hash"] == provenance.source_hash(REPO / "resmem")


def test_license_and_citation_agree_with_the_package():
    """LICENSE is the Apache-2.0 text pyproject declares; CITATION.cff cites this version and, as its preferred
    citation, the paper."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert project["license"] == "Apache-2.0"
    text = (REPO / "LICENSE").read_text()
    assert "Apache License" in text and "Version 2.0, January 2004" in text and "END OF TERMS AND CONDITIONS" in text
    citation = yaml.safe_load((REPO / "CITATION.cff").read_text())
    assert citation["cff-version"] == "1.2.0" and citation["version"] == project["version"]
    assert citation["license"] == project["license"]
    paper = citation["preferred-citation"]
    assert paper["title"] == "ResMem: Learn what you can and memorize the rest" and paper["year"] == 2023
    assert {"type": "other", "value": "arXiv:2302.01576"} in paper["identifiers"]
    assert [a["family-names"] for a in paper["authors"]][:2] == ["Yang", "Lukasik"]


def test_the_slurm_profile_is_checked_without_a_controller(tmp_path):
    """profiles/slurm parses as Snakemake's and the SLURM plugin's options (a dry run plans every job through it
    with no controller: tests/test_slurm.py needs one); a misspelt key in a copy of it is an error that names it."""
    from tests.conftest import snakemake

    profile = yaml.safe_load((REPO / "profiles" / "slurm" / "config.yaml").read_text())
    assert profile["executor"] == "slurm" and importlib.util.find_spec("snakemake_executor_plugin_slurm")
    planned = snakemake(tmp_path, "--profile", str(REPO / "profiles" / "slurm"), "--dry-run",
                        configfile=REPO / "config" / "smoke.yaml")  # fmt: skip
    assert "Job stats:" in planned.stdout
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "config.yaml").write_text(yaml.safe_dump({**profile, "latency-wiat": 60}))
    wrong = snakemake(tmp_path, "--profile", str(tmp_path / "bad"), "--dry-run",
                      configfile=REPO / "config" / "smoke.yaml", check=False)  # fmt: skip
    assert wrong.returncode != 0 and "unrecognized arguments: --latency-wiat=60" in wrong.stderr
