"""``--from hf``: a Hugging Face dataset saved with ``Dataset.save_to_disk``.

SRC is the saved directory (``state.json``, ``dataset_info.json`` and Arrow
stream shards ``data-*.arrow``); its shards are read in the order
``state.json`` lists them. A ``DatasetDict`` is one such directory per split:
convert the split's directory (``SRC/train``). Columns become records as for
``--from parquet``; ``Image`` and ``Audio`` features become their encoded
bytes. The dataset's features (``dataset_info.json``) are kept in the
metadata under ``"hf_features"``, e.g. for the names of a ``ClassLabel``.
"""

import json
import os

from ..errors import ToolError, UsageError
from .arrowipc import ArrowSource

STATE = "state.json"
INFO = "dataset_info.json"
DICT = "dataset_dict.json"


def is_saved_dataset(path):
    return os.path.isdir(path) and (os.path.exists(os.path.join(path, STATE))
                                    or os.path.exists(os.path.join(path, DICT)))


def _load(path):
    try:
        with open(path, "rb") as f:
            return json.load(f)
    except OSError as e:
        raise ToolError(f"{path}: cannot read: {e.strerror}") from None
    except ValueError as e:
        raise ToolError(f"{path}: not valid JSON: {e}") from None


class HuggingFaceSource(ArrowSource):
    kind = "hf"

    def find(self, path):
        root = os.path.abspath(os.fspath(path))
        if not os.path.isdir(root):
            raise UsageError(f"{path}: not a directory (--from hf reads a directory saved by save_to_disk)")
        if os.path.exists(os.path.join(root, DICT)) and not os.path.exists(os.path.join(root, STATE)):
            splits = _load(os.path.join(root, DICT)).get("splits", [])
            raise UsageError(f"{path}: a DatasetDict; convert one split's directory "
                             f"({', '.join(os.path.join(os.fspath(path), s) for s in splits)})")
        state_path = os.path.join(root, STATE)
        if not os.path.exists(state_path):
            raise UsageError(f"{path}: no {STATE}; not a dataset saved with save_to_disk")
        state = _load(state_path)
        try:
            names = [entry["filename"] for entry in state["_data_files"]]
        except (KeyError, TypeError):
            raise ToolError(f"{state_path}: lists no data files (_data_files)") from None
        files = []
        for name in names:
            full = os.path.join(root, name)
            if os.path.dirname(os.path.abspath(full)) != root or not os.path.isfile(full):
                raise ToolError(f"{state_path}: lists {name!r}, which is not a file in the dataset directory")
            files.append(full)
        if not files:
            raise ToolError(f"{state_path}: lists no data files")
        return files

    def extra_metadata(self):
        info_path = os.path.join(self.path, INFO)
        if not os.path.exists(info_path):
            return {}
        features = _load(info_path).get("features")
        return {"hf_features": features} if features is not None else {}
