"""Argument checks shared by the bench's command lines (cli.py, paired.py).

Each ``*_type`` is an argparse ``type=``: a bad value becomes argparse's
one-line ``error: argument --NAME: ...`` (exit status 2) before anything runs.
:func:`prepare_out` checks and creates an output directory; call it after
every other check and before the first measurement.
"""

from __future__ import annotations

import argparse
import math
import os
import tempfile

from fusedopt.bench.cases import parse_shapes


def int_at_least(minimum: int):
    """An integer ``>= minimum``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected an integer >= {minimum}, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"expected an integer >= {minimum}, got {value}")
        return value

    parse.__name__ = f"integer >= {minimum}"
    return parse


def positive_seconds(text: str) -> float:
    """A finite number of seconds > 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a number of seconds > 0, got {text!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"expected a number of seconds > 0, got {text}")
    return value


def shapes(text: str):
    """``NxSIZE,...`` (cases.parse_shapes)."""
    try:
        return parse_shapes(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def names_from(valid, what: str):
    """A comma-separated list of names, each one of ``valid()`` (a callable,
    so that a registry filled later is read when the arguments are parsed)."""

    def parse(text: str) -> list[str]:
        names = [x.strip() for x in text.split(",") if x.strip()]
        known = list(valid())
        if not names:
            raise argparse.ArgumentTypeError(f"expected one or more {what}s from: "
                                             f"{', '.join(known)}")
        unknown = [n for n in names if n not in known]
        if unknown:
            raise argparse.ArgumentTypeError(
                f"unknown {what}{'s' * (len(unknown) > 1)} {', '.join(map(repr, unknown))} "
                f"(valid: {', '.join(known)})")
        return names

    parse.__name__ = f"{what} list"
    return parse


def file_prefix(text: str) -> str:
    """A file name prefix: not empty, no directory separator."""
    if not text or os.sep in text or (os.altsep and os.altsep in text) or text in (".", ".."):
        raise argparse.ArgumentTypeError(
            f"expected a file name prefix without {os.sep!r}, got {text!r}")
    return text


def prepare_out(parser: argparse.ArgumentParser, path: str, option: str = "--out",
                files=()) -> str:
    """Checks that ``path`` is, or can be created as, a writable directory,
    creates it, and checks that none of ``files`` (names inside it) is a
    directory; otherwise ``parser.error`` naming ``option``."""
    if os.path.exists(path) and not os.path.isdir(path):
        parser.error(f"argument {option}: {path!r} is a file, expected a directory")
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as e:
        parser.error(f"argument {option}: cannot create the directory {path!r}: "
                     f"{e.strerror or e}")
    try:  # os.access says yes to root everywhere; a real file says the truth
        fd, probe = tempfile.mkstemp(dir=path, prefix=".fusedopt-bench-")
        os.close(fd)
        os.remove(probe)
    except OSError as e:
        parser.error(f"argument {option}: the directory {path!r} is not writable: "
                     f"{e.strerror or e}")
    for name in files:
        target = os.path.join(path, name)
        if os.path.isdir(target):
            parser.error(f"argument {option}: {target!r} is a directory, the run would write "
                         "a file there")
    return path
