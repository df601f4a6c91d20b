"""Logging for workflow jobs: everything (tqdm bars included) goes to the job's log file."""

from __future__ import annotations

import contextlib
import logging
import sys

from resmem.config import ConfigError
from resmem.io import ArtifactError


@contextlib.contextmanager
def job_log(path):
    """Send logging and stderr to `path`. A user mistake (bad config, bad artifact) ends the job with its
    one-line message in the log and on the console instead of a traceback."""
    console = sys.stderr
    with open(path, "a", buffering=1) as log_file:
        handler = logging.StreamHandler(log_file)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        logging.basicConfig(level=logging.INFO, handlers=[handler], force=True)
        sys.stderr = log_file
        try:
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
