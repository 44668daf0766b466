"""Corpus-scale analysis: resumable, shardable prediction jobs over folders of photos and videos.

* :class:`CorpusJob` / :func:`run_corpus`: predict every input of a corpus into a Parquet (or
  CSV) dataset of parts, one row per face (per frame for videos), with a ledger of finished
  inputs so that ``resume=True`` does only what is left, after a crash or a kill.
* Under ``torchrun`` each process takes a disjoint share of the inputs and writes its own parts.
* :func:`read_corpus`: the committed rows (or errors) of an output folder as a DataFrame.
* :func:`list_inputs`, :func:`shard`: the corpus in its stable order, and one process's share.
* :mod:`affectfpn.corpus.ray`: the same prediction as a callable class for Ray Data's
  ``map_batches`` (the ``ray`` extra).

See docs/corpus.md.
"""

from affectfpn.corpus.inputs import CorpusInput, list_inputs, shard
from affectfpn.corpus.job import LEADING_COLUMNS, CorpusJob, JobSummary, read_corpus, run_corpus
from affectfpn.corpus.ledger import JobError, Ledger

__all__ = [
    "LEADING_COLUMNS",
    "CorpusInput",
    "CorpusJob",
    "JobError",
    "JobSummary",
    "Ledger",
    "list_inputs",
    "read_corpus",
    "run_corpus",
    "shard",
]
