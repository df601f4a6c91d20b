"""The frame of every workflow job: everything it logs (tqdm bars included) goes to the job's log file, and its
files go through the chain of custody (`resmem.custody`)."""

from __future__ import annotations

import contextlib
import logging
import sys

from resmem import custody
from resmem.config import ConfigError
from resmem.io import ArtifactError


@contextlib.contextmanager
def workflow_job(sm):
    """The body of a workflow script (`sm`: the `snakemake` object Snakemake gives it): logging and stderr go to
    the job's log, its inputs are checked against their custody records before it runs and its outputs recorded
    after (`resmem.custody.job`). A user mistake (bad config, bad or edited artifact) ends the job with its
    one-line message in the log and on the console instead of a traceback."""
    console = sys.stderr
    with open(sm.log[0], "a", buffering=1) as log_file:
        handler = logging.StreamHandler(log_file)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        logging.basicConfig(level=logging.INFO, handlers=[handler], force=True)
        sys.stderr = log_file
        try:
            with custody.job(sm.input, sm.output, sm.rule):
                yield
        except (ArtifactError, ConfigError) as exc:
            logging.getLogger("resmem").error("%s", exc)
            print(f"ERROR: {exc}", file=console)
            sys.exit(1)
        except BaseException:
            logging.getLogger("resmem").exception("the job failed")
            raise
        finally:
            sys.stderr = console
