"""What reaches the console: our own lines, clean and safe; the libraries' lines, only on request.

Everything we print passes through :func:`for_console`, which does two things:

- redacts credentials inside URLs (``http://KEY:SECRET@host``) and the signed
  parts of presigned URLs, since error messages from boto3 and others quote the
  URL they used;
- escapes control characters (a newline, an ANSI escape, a bidi override) so that
  an item id or a text from the input can neither forge a status line nor
  recolour or reorder the terminal.

The libraries we drive (Ray, transformers, huggingface_hub, tokenizers) print
warnings, banners and progress bars of their own. A script parses our summary
line on stdout and a person reads our progress on stderr, so unless the user
asks for ``--verbose`` those lines are silenced at their source: Python warnings
are ignored, library loggers raised to ERROR, and Ray is started without
forwarding its workers' output (:func:`ray_init_options`).

This module imports nothing heavy: it runs before the config is even read.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import warnings

REDACTED = "[redacted]"

# scheme://user:password@  or  scheme://token@  (the user part alone is often a key id); also
# scheme:/user:password@, the same URL after a path library collapsed its "//".
_URL_USERINFO = re.compile(r"(?i)\b([a-z][a-z0-9+.\-]*:/{1,2})[^/\s@'\"<>]+@")
# Signed query parameters of presigned URLs, and key=value spellings of secrets.
_SECRET_PARAMS = re.compile(
    r"(?i)\b(x-amz-signature|x-amz-credential|x-amz-security-token|signature|aws_secret_access_key|"
    r"aws_session_token|secret_access_key|password|token)=([^&\s'\"]+)"
)
# Control characters (C0, DEL, C1), line and paragraph separators, and the bidi
# controls that reorder what a terminal shows (Trojan Source).
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u200e\u200f\u061c\u202a-\u202e\u2066-\u2069]")
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t", "\x1b": "\\x1b"}
# Terminal colour and style sequences (CSI ... m and the like), as libraries write them.
_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")

# Library loggers silenced (to ERROR) unless --verbose; Ray's own go further (see quiet_ray_logging).
LIBRARY_LOGGERS = ("ray", "transformers", "huggingface_hub", "urllib3", "botocore", "boto3", "s3transfer", "filelock", "fsspec")
# Environment read by the libraries at import or start-up. setdefault: a user's own setting wins.
QUIET_ENVIRONMENT = {
    "TRANSFORMERS_VERBOSITY": "error",
    "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1",
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    "TOKENIZERS_PARALLELISM": "false",  # else a fork after the tokenizer ran prints a warning per process
}


def redact(text: str) -> str:
    """``text`` with URL credentials and signed-URL secrets replaced by ``[redacted]``."""
    text = _URL_USERINFO.sub(lambda m: f"{m.group(1)}{REDACTED}@", text)
    return _SECRET_PARAMS.sub(lambda m: f"{m.group(1)}={REDACTED}", text)


def escape_controls(text: str) -> str:
    """Control characters shown as escapes (``\\n``, ``\\x1b``, ``\\u202e``): one printed line stays one line."""
    return _UNSAFE.sub(_escape_one, text)


def _escape_one(match: re.Match) -> str:
    ch = match.group(0)
    if ch in _NAMED:
        return _NAMED[ch]
    return f"\\x{ord(ch):02x}" if ord(ch) < 0x100 else f"\\u{ord(ch):04x}"


def strip_ansi(text: str) -> str:
    """A library's line without its colour codes (for output that is not a terminal)."""
    return _ANSI.sub("", text)


def for_console(text: object) -> str:
    """One safe line: credentials redacted, control characters escaped."""
    return escape_controls(redact(str(text)))


def say(message: object, *, file=None) -> None:
    """Prints one of our own lines (default: stderr), made safe; multi-line messages stay multi-line, each line safe."""
    stream = file if file is not None else sys.stderr
    print("\n".join(for_console(line) for line in str(message).split("\n")), file=stream, flush=True)


class SafeFormatter(logging.Formatter):
    """Log records (tracebacks included) redacted and escaped line by line; a library's own
    colour codes (``--verbose``) removed first, so they neither colour nor clutter the line."""

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        if not record.name.startswith("pipeline"):
            text = strip_ansi(text)
        return "\n".join(for_console(line) for line in text.split("\n"))


def configure(*, verbose: bool, quiet: bool) -> None:
    """Our log lines to stderr through :class:`SafeFormatter`; the libraries' silenced unless ``verbose``."""
    root = logging.getLogger()
    if not root.handlers:  # as logging.basicConfig: a host that set up logging (pytest, an API user) keeps its own
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(SafeFormatter("%(message)s"))
        root.addHandler(handler)
    root.setLevel(logging.WARNING)
    logging.getLogger("pipeline").setLevel(logging.WARNING if quiet else logging.INFO)
    if verbose:
        if not _is_terminal(sys.stderr):
            os.environ.setdefault("RAY_COLOR_PREFIX", "0")  # Ray colours its "(pid=...)" prefixes even in a pipe
        return
    for name, value in QUIET_ENVIRONMENT.items():
        os.environ.setdefault(name, value)
    warnings.filterwarnings("ignore")
    logging.captureWarnings(False)
    for name in LIBRARY_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)


def tame_ray_logging(*, verbose: bool) -> None:
    """Ray gives its ``ray`` logger a handler of its own on import, and ``ray.init`` replaces it
    unless told not to (:func:`ray_init_options` tells it). Unless ``verbose`` nothing of Ray's
    logging reaches the console; with ``verbose`` its records go through our handler (colour codes
    removed: Ray writes them into the message text itself)."""
    logger = logging.getLogger("ray")
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
    if verbose:
        logger.setLevel(logging.INFO)
        logger.propagate = True
    else:
        logger.setLevel(logging.CRITICAL + 1)  # not even Python's last-resort handler prints them
        logger.propagate = False


def _is_terminal(stream) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def ray_init_options(*, verbose: bool) -> dict:
    """Arguments for ``ray.init`` that keep Ray's and the actors' output off our console unless ``verbose``.

    ``log_to_driver=False``: the actors' stdout/stderr (and Ray's per-task
    retry warnings) stay in Ray's session logs instead of being echoed by the
    driver. ``configure_logging=False``: the driver-side ``ray`` logger stays as
    :func:`tame_ray_logging` set it.
    """
    return {"log_to_driver": verbose, "configure_logging": False}  # see tame_ray_logging
