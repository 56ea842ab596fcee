"""The one error type every driver raises."""


class DriverError(Exception):
    """A call to an external system failed.

    `permanent` says whether trying again can help: a refused command or bad input is permanent,
    a timeout or a dropped connection is not.
    """

    def __init__(self, message: str, *, permanent: bool = False) -> None:
        super().__init__(message)
        self.permanent = permanent
