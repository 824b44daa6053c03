"""The one exception type the CLI turns into a clear message and a non-zero exit."""


class DatasetError(Exception):
    """Bad raw input or a bad dataset: the message names the file and what is wrong."""
