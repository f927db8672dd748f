"""Errors caused by the user's input; the CLI prints their message alone, on one line, without a traceback."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from mckd.layout import CLI_LOG

log = logging.getLogger("mckd")
USER_ERROR_EXIT = 2
# the job log's format (Hydra's default), for errors reported before Hydra has set up logging
LINE_FORMAT = "[%(asctime)s][%(name)s][%(levelname)s] - %(message)s"


class MckdError(Exception):
    """Base of every error whose message names the file or key at fault and what was expected."""


def debugging() -> bool:
    """`MCKD_DEBUG=1`: user errors also print their traceback."""
    return os.environ.get("MCKD_DEBUG", "") not in ("", "0")


def one_line(message: str) -> str:
    return " ".join(part.strip() for part in str(message).splitlines() if part.strip())


def logged_to_file(path: Path) -> bool:
    """Whether a logging handler already writes to `path` (Hydra's job log is `<exp>/cli.log`, after mckd/cli.py)."""
    return any(isinstance(h, logging.FileHandler) and Path(h.baseFilename) == path.absolute()
               for h in logging.getLogger().handlers)


def cli_log_handler(directory: str | Path | None) -> logging.Handler | None:
    """A handler appending to `<directory>/cli.log` when that directory exists and is writable and the job's log
    does not go there already."""
    if directory is None or not Path(directory).is_dir() or logged_to_file(Path(directory) / CLI_LOG):
        return None
    try:
        return logging.FileHandler(Path(directory) / CLI_LOG)
    except OSError:
        return None


def report_user_error(err: MckdError, log_dir: str | Path | None = None, logging_ready: bool = True,
                      prefix: str = "") -> None:
    """Log `err` as one ERROR line (with its traceback under MCKD_DEBUG=1), also in `log_dir`/cli.log; `prefix`
    marks it where the log format shows no level. Before Hydra configured logging, the handlers are our own."""
    handlers = [] if logging_ready else [logging.StreamHandler(sys.stdout)]
    if (file := cli_log_handler(log_dir)) is not None:
        handlers.append(file)
    for handler in handlers:
        handler.setFormatter(logging.Formatter(LINE_FORMAT))
        log.addHandler(handler)
    log.propagate = logging_ready
    try:
        log.error("%s", prefix + one_line(str(err)), exc_info=err if debugging() else None)
    finally:
        log.propagate = True
        for handler in handlers:
            log.removeHandler(handler)
            handler.close()


@contextmanager
def exit_on_user_error(log_dir: str | Path | None = None, logging_ready: bool = True,
                       prefix: str = "") -> Iterator[None]:
    """Turn an MckdError raised inside into its one-line report and exit status 2."""
    try:
        yield
    except MckdError as err:
        report_user_error(err, log_dir, logging_ready, prefix)
        raise SystemExit(USER_ERROR_EXIT) from None
