"""Errors a user can cause, and the boundary that turns them into one-line messages."""

from __future__ import annotations

import functools
import sys


class CovidSegError(Exception):
    """A problem with the user's input (paths, files, config values); never a bug."""


class DataError(CovidSegError):
    """Input data a user can fix; the message names each offending file."""


class VolumeReadError(ValueError):
    """A NIfTI file or DICOM series that is missing, unreadable, corrupt or not a 3D volume."""


def user_errors(main):
    """Entry-point decorator: a ``CovidSegError`` prints ``error: ...`` and exits with 2."""

    @functools.wraps(main)
    def wrapper(*args, **kwargs):
        try:
            return main(*args, **kwargs)
        except CovidSegError as err:
            print(f"error: {err}", file=sys.stderr)
            raise SystemExit(2) from None

    return wrapper
