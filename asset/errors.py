"""AssetError: the base of every error that is the user's input or setup (a bad option, dataset, model directory,
export or backend), with a message that says what was wrong and how to fix it. `asset` prints such an error as
`error: ...` and exits 2 (asset/cli.py); anything else is a bug and keeps its traceback."""


class AssetError(Exception):
    """The user's input or setup is wrong; the message names it and the fix."""
