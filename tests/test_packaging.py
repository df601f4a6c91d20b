"""Install metadata, conda environments, README, CI and lint agree with each other."""

import re
import subprocess
import sys

import tomllib
import yaml

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
