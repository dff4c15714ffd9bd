"""One exception type for mistakes a user can fix (missing data, bad argument, wrong checkpoint).

The CLI prints a `UserError` as one paragraph and exits non-zero, with no traceback; everything
else is a bug and keeps its traceback.
"""


class UserError(Exception):
    """A problem with the user's input, explained in one paragraph that names the file and the fix."""
