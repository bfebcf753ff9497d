"""Quiet by default: the job's own progress lines, warnings and errors; `--verbose` for everything.

Off a terminal (`ray job logs`, CI, a file) Ray Data prints a multi-line block of operator progress every
few seconds, and Ray logs its start-up at INFO; on the 6-row demo that was 34 stderr lines. Unless
verbose, Ray Data's progress bars are shown only on a terminal and its execution logs are kept at WARNING.
"""

from __future__ import annotations

import logging
import sys


def quiet_ray(verbose: bool = False) -> None:
    import ray.data

    if verbose:
        return
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = sys.stderr.isatty()
    ctx.print_on_execution_start = False
    for name in ("ray", "ray.data", "ray.data._internal.execution.streaming_executor"):
        logging.getLogger(name).setLevel(logging.WARNING)
    # "Progress bars disabled" (we disabled them) and "token authentication is enabled" (a local cluster's
    # default, nothing to act on) say nothing to a user; the warning that auth is *disabled* stays.
    logging.getLogger("ray.data._internal.progress").setLevel(logging.ERROR)
    logging.getLogger("ray._private.authentication.authentication_token_setup").addFilter(
        lambda record: not record.getMessage().startswith("Token authentication is enabled"))
