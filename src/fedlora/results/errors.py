"""The run-folder error, apart from :mod:`~fedlora.results.store` so the CLI can catch it
without importing torch."""


class RunFolderError(ValueError):
    """A folder that is not a finished fedlora run (the message names the missing file)."""
