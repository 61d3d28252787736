"""The data layer: read a task's splits, tokenize them once, and divide them among clients."""

from fedlora.data.encoding import EncodedSplit, clear_memo, collate, encode_split
from fedlora.data.partition import PartitionError, partition
from fedlora.data.sources import DataError, Example, LabelledSplit, load_split
from fedlora.data.tasks import TASKS, TaskSpec, available_tasks

__all__ = [
    "TASKS",
    "DataError",
    "EncodedSplit",
    "Example",
    "LabelledSplit",
    "PartitionError",
    "TaskSpec",
    "available_tasks",
    "clear_memo",
    "collate",
    "encode_split",
    "load_split",
    "partition",
]
