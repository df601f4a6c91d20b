"""The two stages of a regression study: the risk table, then its figure, summary and provenance."""

from __future__ import annotations

import logging

import pandas as pd

from resmem import io, regression

log = logging.getLogger("resmem")


def risk(out_path, study: dict) -> None:
    table = regression.risk_table(study)
    log.info("%d rows: %d sizes × %d seeds × 3 methods", len(table), len(study["n_train"]), len(study["seeds"]))
    io.write_csv(out_path, table)


def report(experiment: str, risk_path, out: dict, study: dict, config: dict, repo_dir) -> None:
    table = pd.read_csv(risk_path)
    linear_risk = regression.best_linear_risk(study)
    regression.plot_risk(table, experiment, study, linear_risk, out["png"], out["pdf"])
    io.write_text(out["summary_md"], regression.summary_markdown(table, experiment, study, linear_risk))
    io.write_json(
        out["provenance"],
        {
            "experiment": experiment,
            "config": config,
            "best_linear_risk": linear_risk,
            "noise_floor": study["noise"] ** 2,
            "git_commit": io.git_commit(repo_dir),
            "versions": io.package_versions(),
        },
    )
