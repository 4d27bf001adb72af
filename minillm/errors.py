"""Exceptions raised by minillm."""


class GGUFError(ValueError):
    """A GGUF file is unreadable, inconsistent, or not a model minillm supports.

    The message names the offending tensor or metadata key.
    """
