"""Data room: corpora, cleaning, dedup, mixtures, packing into token shards, loaders.

    from llmkit.data import DataConfig, prepare_data, PackedDataset, BatchLoader
    prepared = prepare_data(DataConfig(seq_len=256), "data/stdlib")
    loader = BatchLoader(PackedDataset("data/stdlib", "train"), batch_size=8, seed=0)
    batch = next(loader)  # LongTensor (8, 257): inputs batch[:, :-1], targets batch[:, 1:]

torch is imported only when a batch is made, so worker processes stay light.
"""

from llmkit.data.config import CleanConfig, DataConfig, DataError, DedupConfig, SourceConfig
from llmkit.data.corpus import stdlib_files, stdlib_texts
from llmkit.data.dataset import BatchLoader, PackedDataset
from llmkit.data.prepare import PreparedData, prepare_data
from llmkit.data.stats import format_stats
from llmkit.data.tasks import TaskExample, TaskSpec, get_task, list_tasks, load_task, task_splits

__all__ = ["BatchLoader", "CleanConfig", "DataConfig", "DataError", "DedupConfig", "PackedDataset", "PreparedData",
           "SourceConfig", "TaskExample", "TaskSpec", "format_stats", "get_task", "list_tasks", "load_task", "prepare_data",
           "stdlib_files", "stdlib_texts", "task_splits"]
