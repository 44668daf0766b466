"""Ray Data (affectfpn.corpus.ray): the same rows as the single-process job, on a local Ray."""

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

from affectfpn.corpus import read_corpus, run_corpus
from affectfpn.errors import ConfigError, MissingExtraError

sys.path.insert(0, str(Path(__file__).parent))
from test_corpus import MODEL, _make_corpus, _row_set

HAS_RAY = importlib.util.find_spec("ray") is not None


@pytest.mark.skipif(HAS_RAY, reason="ray is installed: the missing-extra error cannot show")
def test_missing_ray_names_the_extra(tmp_path: Path) -> None:
    from affectfpn.corpus.ray import corpus_dataset

    with pytest.raises(MissingExtraError, match=r"affectfpn\[ray\]"):
        corpus_dataset(tmp_path)


def test_unknown_read_mode_names_the_choices(tmp_path: Path) -> None:
    from affectfpn.corpus.ray import corpus_dataset

    (tmp_path / "a.jpg").write_bytes(b"")
    with pytest.raises(ConfigError, match=r"read='files'.*'paths'.*'bytes'") as caught:
        corpus_dataset(tmp_path, read="files")
    assert caught.value.option == "read"


def test_a_batch_of_paths_gives_the_job_rows(tmp_path: Path) -> None:
    """Without Ray: AffectPredictor called on a batch of paths (what corpus_dataset's default
    gives it) reads the files itself and returns the job's rows, and one error row."""
    pytest.importorskip("pyarrow")
    from affectfpn.corpus.ray import AffectPredictor

    corpus = _make_corpus(tmp_path / "in", photos=3)
    run_corpus(corpus, tmp_path / "job", model=MODEL, progress=False)
    paths = sorted(str(p) for p in corpus.iterdir())
    table = AffectPredictor(MODEL)({"path": np.array(paths)}).to_pandas()
    failed = table[table["error"].notna()]
    assert list(failed["input"]) == [str(corpus / "broken.jpg")]
    rows = table[table["error"].isna()].drop(columns="error")
    expected = read_corpus(tmp_path / "job")
    assert _row_set(rows.astype(expected.dtypes.to_dict())) == _row_set(expected)


@pytest.mark.slow
@pytest.mark.skipif(not HAS_RAY, reason="needs the 'ray' extra: pip install 'affectfpn[ray]'")
def test_ray_gives_the_single_process_rows(tmp_path: Path) -> None:
    """Both shapes on a local Ray of 2 CPUs: the small machine's (one actor with both torch
    threads, reading paths) and the cluster's (two actors, photos read by Ray as bytes)."""
    import pandas as pd
    import ray

    from affectfpn.corpus.ray import AffectPredictor, corpus_dataset

    corpus = _make_corpus(tmp_path / "in", photos=6)
    run_corpus(corpus, tmp_path / "job", model=MODEL, progress=False)
    expected = read_corpus(tmp_path / "job")
    shapes = {
        "paths": {"actors": 1, "num_cpus": 1.0, "torch_threads": 2},
        "bytes": {"actors": 2, "num_cpus": 0.5, "torch_threads": None},
    }
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        ray.data.DataContext.get_current().enable_progress_bars = False
        for read, shape in shapes.items():
            dataset = corpus_dataset(corpus, read=read).map_batches(
                AffectPredictor,
                fn_constructor_kwargs={"model": MODEL, "torch_threads": shape["torch_threads"]},
                compute=ray.data.ActorPoolStrategy(size=shape["actors"]),
                num_cpus=shape["num_cpus"],
                batch_size=4,
            )
            dataset.write_parquet(str(tmp_path / read))
    finally:
        ray.shutdown()
    for read in shapes:
        table = pd.read_parquet(tmp_path / read)
        failed = table[table["error"].notna()]
        assert list(failed["input"]) == [str(corpus / "broken.jpg")], read
        rows = table[table["error"].isna()].drop(columns="error")
        assert sorted(rows.columns) == sorted(expected.columns)
        assert _row_set(rows.astype(expected.dtypes.to_dict())) == _row_set(expected), read
