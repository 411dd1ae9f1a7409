"""The errors of `atrous.data`: a dataset, or one of its files, that cannot be used.

Every message names the dataset or file and says what to do. All are `DatasetError`s (and so
`ValueError`s), which the command line reports as a failed run (exit status 1). A leaf module:
anything in `atrous.data` may import it.
"""

from __future__ import annotations

__all__ = ["DatasetError", "ImageReadError", "ImageTooLargeError", "UnknownColorError"]


class DatasetError(ValueError):
    """A dataset or one of its files cannot be used; the message says which and what to do."""


class ImageReadError(DatasetError):
    """An image or label file is missing, unreadable, truncated or of an unsupported kind."""


class ImageTooLargeError(ImageReadError):
    """An image or label file has more pixels than the budget (INPUT.MAX_IMAGE_PIXELS)."""


class UnknownColorError(DatasetError):
    """A colour-coded mask holds a colour that is neither a class's nor an ignored one.

    Attributes:
        colors: ``{(r, g, b): pixel count}`` of the unlisted colours.
    """

    def __init__(self, message: str, colors: dict[tuple[int, int, int], int]) -> None:
        super().__init__(message)
        self.colors = colors

    def __reduce__(self):  # both arguments survive pickling (worker processes)
        return type(self), (str(self), self.colors)
