"""User-facing errors: bad input that the user can fix."""


class SimcryoError(Exception):
    """An error caused by the input, reported as one line without a traceback."""
