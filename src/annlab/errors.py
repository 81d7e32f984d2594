"""Errors that are the user's to fix: stages print their message, without a traceback."""


class UserError(Exception):
    """Base class: the message says what was wrong, where, and what is allowed."""


class ParamsError(UserError):
    """params.yaml is missing, unreadable or invalid."""


class Interrupted(BaseException):  # a BaseException, like KeyboardInterrupt: not caught as an error
    """The stage was asked to stop (SIGTERM); SIGINT raises KeyboardInterrupt as usual."""


class FetchError(UserError):
    """A download failed or did not match its pinned checksum."""


class DataError(UserError):
    """The user's own data (data.path) is missing, unreadable or unfit to train on."""
