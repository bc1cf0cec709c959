"""User-facing errors: bad input that the user can fix."""


class SimcryoError(Exception):
    """An error caused by the input, reported as one line without a traceback."""


def warn(message):
    """A warning the user should see (stderr, one line): the run goes on."""
    import sys
    print(f"warning: {message}", file=sys.stderr, flush=True)
