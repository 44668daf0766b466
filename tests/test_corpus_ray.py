"""Ray Data (affectfpn.corpus.ray): the same rows as the single-process job, on a local Ray."""

import importlib.util
import sys
from pathlib import Path

import pytest

from affectfpn.corpus import read_corpus, run_corpus
from affectfpn.errors import MissingExtraError

sys.path.insert(0, str(Path(__file__).parent))
from test_corpus import MODEL, _make_corpus, _row_set

HAS_RAY = importlib.util.find_spec("ray") is not None


@pytest.mark.skipif(HAS_RAY, reason="ray is installed: the missing-extra error cannot show")
def test_missing_ray_names_the_extra(tmp_path: Path) -> None:
    from affectfpn.corpus.ray import corpus_dataset

    with pytest.raises(MissingExtraError, match=r"affectfpn\[ray\]"):
        corpus_dataset(tmp_path)


@pytest.mark.slow
@pytest.mark.skipif(not HAS_RAY, reason="needs the 'ray' extra: pip install 'affectfpn[ray]'")
def test_ray_two_workers_give_the_single_process_rows(tmp_path: Path) -> None:
    import pandas as pd
    import ray

    from affectfpn.corpus.ray import AffectPredictor, corpus_dataset

    corpus = _make_corpus(tmp_path / "in", photos=6)
    run_corpus(corpus, tmp_path / "job", model=MODEL, progress=False)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        ray.data.DataContext.get_current().enable_progress_bars = False
        dataset = corpus_dataset(corpus).map_batches(
            AffectPredictor,
            fn_constructor_kwargs={"model": MODEL},
            compute=ray.data.ActorPoolStrategy(size=2),
            num_cpus=0.5,  # two actors leave a core to Ray's read and write tasks
            batch_size=4,
        )
        dataset.write_parquet(str(tmp_path / "ray"))
    finally:
        ray.shutdown()
    table = pd.read_parquet(tmp_path / "ray")
    failed = table[table["error"].notna()]
    assert list(failed["input"]) == [str(corpus / "broken.jpg")]
    rows = table[table["error"].isna()].drop(columns="error")
    expected = read_corpus(tmp_path / "job")
    assert sorted(rows.columns) == sorted(expected.columns)
    assert _row_set(rows.astype(expected.dtypes.to_dict())) == _row_set(expected)
