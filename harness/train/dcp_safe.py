"""Reading a sharded checkpoint (torch.distributed.checkpoint) without running anything a folder supplies.

torch's FileSystemReader unpickles `.metadata` with plain `pickle`, and its DefaultLoadPlanner loads every
non-tensor item with `torch.load(weights_only=False)`: a crafted folder would run code on resume. Here the
metadata goes through an unpickler that builds only the classes torch's own metadata is made of (found by
reading real `.metadata` files with pickletools), and non-tensor items load with `weights_only=True`,
as tensors already do. Anything else is refused with the global it asked for.
"""

from __future__ import annotations

import io
import pickle
from pathlib import Path
from typing import Any

import torch
from torch.distributed.checkpoint import DefaultLoadPlanner, FileSystemReader
from torch.distributed.checkpoint._traverse import set_element
from torch.distributed.checkpoint.metadata import StorageMeta

METADATA_FILE = ".metadata"

# (module, name) of every global a `.metadata` written by torch 2.13 holds (its Metadata, the file system
# writer's storage index, sizes, dtypes, layouts, the checkpoint's path), and plain containers: each builds
# a value, none runs anything.
ALLOWED_GLOBALS = {
    ("torch.distributed.checkpoint.metadata", name) for name in (
        "Metadata", "TensorStorageMetadata", "BytesStorageMetadata", "ChunkStorageMetadata", "TensorProperties",
        "MetadataIndex", "StorageMeta", "_MEM_FORMAT_ENCODING")
} | {
    ("torch.distributed.checkpoint.filesystem", "_StorageInfo"), ("torch.serialization", "_get_layout"),
    ("torch", "Size"), ("torch", "device"), ("pathlib", "PosixPath"), ("pathlib", "PurePosixPath"),
    ("collections", "OrderedDict"), ("builtins", "set"), ("builtins", "frozenset"),
} | {("torch", name) for name in dir(torch) if isinstance(getattr(torch, name, None), torch.dtype)}


class RefusedGlobal(pickle.UnpicklingError):
    """A `.metadata` asked for a global that torch's metadata never holds."""

    def __init__(self, module: str, name: str):
        self.global_name = f"{module}.{name}"
        super().__init__(f"it asks for the global {self.global_name}, which no checkpoint needs")


class MetadataUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in ALLOWED_GLOBALS:
            return super().find_class(module, name)
        raise RefusedGlobal(module, name)


def read_metadata(path: Path | str):
    """The Metadata object of a `.metadata` file; RefusedGlobal (or another UnpicklingError) when crafted."""
    with open(path, "rb") as handle:
        return MetadataUnpickler(handle).load()


class SafeReader(FileSystemReader):
    """torch's file system reader with the metadata read by MetadataUnpickler."""

    def read_metadata(self, *args: Any, **kwargs: Any):
        rank = kwargs.get("rank")
        metadata = read_metadata(self._get_metadata_path(rank))
        if getattr(metadata, "storage_meta", None) is None:
            metadata.storage_meta = StorageMeta()
        metadata.storage_meta.load_id = self.load_id
        return metadata


class SafePlanner(DefaultLoadPlanner):
    """torch's default load planner with non-tensor items loaded weights only."""

    def load_bytes(self, read_item, value: io.BytesIO) -> None:
        loaded = torch.load(value, weights_only=True)
        if self.flatten_state_dict:
            set_element(self.original_state_dict, self.mappings[read_item.dest_index.fqn], loaded)
        else:
            self.state_dict[read_item.dest_index.fqn] = loaded


def load(state_dict: dict[str, Any], folder: Path | str) -> None:
    """`dcp.load` of `folder` into `state_dict`, through SafeReader and SafePlanner."""
    import torch.distributed.checkpoint as dcp
    dcp.load(state_dict, storage_reader=SafeReader(str(folder)), planner=SafePlanner())
