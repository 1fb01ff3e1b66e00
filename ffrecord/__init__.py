"""ffrecord: record files with batched asynchronous reads for deep learning.

The core API: ``FileWriter`` and ``FileReader`` (docs in their classes),
``pack_folder`` / ``PackedFolder``, and the error types; ``checkFsAlign`` and
``ffrecord.utils.dump`` complete the original FFRecord package's interface
(see ``docs/MIGRATING.md``). PyTorch integration lives in ``ffrecord.torch``
and checkpoints in ``ffrecord.checkpoint`` (both imported on demand, so
``import ffrecord`` does not import torch).
"""

from importlib.metadata import PackageNotFoundError, version as _version

from . import utils
from .errors import ChecksumError, FFRecordError, FormatError
from .fileio import checkFsAlign
from .packed_folder import PackedFolder, pack_folder
from .reader import FileReader
from .writer import FileWriter

try:
    __version__ = _version("ffrecord")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "2.0.0"

__all__ = [
    "FileReader",
    "FileWriter",
    "FFRecordError",
    "FormatError",
    "ChecksumError",
    "pack_folder",
    "PackedFolder",
    "checkFsAlign",
    "__version__",
]
