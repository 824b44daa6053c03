"""datatools: turn raw public defect datasets into one standard, versioned format.

See FORMAT.md for the format, `datatool --help` for the commands.
"""

__version__ = "1.0.0"

SCHEMA_ID = "defect-dataset/1"
