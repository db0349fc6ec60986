"""The error raised for missing, empty or unreadable data."""

from __future__ import annotations


class DataSourceError(ValueError):
    """A data source is missing, empty, corrupt or laid out differently than expected.

    The message names the offending path and the layout that was expected.
    """
