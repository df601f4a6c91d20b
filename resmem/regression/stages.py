"""The two stages of a regression study: the risk table, then its figure, summary and provenance."""

from __future__ import annotations

import logging

import pandas as pd

from resmem import io
from resmem.regression import study
from resmem.regression.report import plot_risk, summary_markdown
from resmem.stages import write_provenance

log = logging.getLogger("resmem")


def risk(out_path, cfg: dict) -> None:
    table = study.risk_table(cfg)
    log.info("%d rows: %d sizes × %d seeds × 3 methods", len(table), len(cfg["n_train"]), len(cfg["seeds"]))
    io.write_csv(out_path, table)


def report(experiment: str, risk_path, out: dict, cfg: dict, config: dict, repo_dir) -> None:
    table = pd.read_csv(risk_path)
    linear_risk = study.best_linear_risk(cfg)
    plot_risk(table, experiment, cfg, linear_risk, out["png"], out["pdf"])
    io.write_text(out["summary_md"], summary_markdown(table, experiment, cfg, linear_risk))
    extra = {"best_linear_risk": linear_risk, "noise_floor": cfg["noise"] ** 2}
    write_provenance(out["provenance"], experiment, config, [], ["cpu"], repo_dir, [risk_path], **extra)
