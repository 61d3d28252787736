"""The data layer: read a task's splits, tokenize them once, and divide them among clients.

Tokenizing needs torch and partitioning numpy, so :mod:`~fedlora.data.encoding` and
:mod:`~fedlora.data.partition` are imported from themselves, not here: the CLI reads tasks and
data errors from this package and still starts at once.
"""

from fedlora.data.examples import Example, LabelledSplit
from fedlora.data.rows import DataError
from fedlora.data.sources import load_split
from fedlora.data.tasks import TASKS, TaskSpec, available_tasks

__all__ = [
    "TASKS",
    "DataError",
    "Example",
    "LabelledSplit",
    "TaskSpec",
    "available_tasks",
    "load_split",
]
