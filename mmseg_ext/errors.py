"""The plugin's error for bad constructor and function arguments."""

__all__ = ['InvalidArgumentError']


class InvalidArgumentError(ValueError, AssertionError):
    """A bad argument, with a message that names it and its value.

    mmseg checks the same arguments with ``assert`` (``AssertionError``), so code written against mmseg
    catches ``AssertionError``; Python code in general expects ``ValueError`` for a bad value. This class
    is both, so either ``except`` clause keeps working when a config switches to the plugin.
    """
