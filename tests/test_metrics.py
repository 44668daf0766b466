"""Tests of affectfpn.metrics: agreement with scikit-learn, CCC edge cases, meters, sync."""

import io
import itertools
import json
import math
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch

from affectfpn import metrics as M
from affectfpn.errors import InputError

C = 7  # expression classes
K = 12  # action units


@pytest.fixture
def skm() -> Any:
    """scikit-learn's metrics module (a test-only dependency), imported lazily.

    Kept out of the module level so that the processes spawned by the distributed test do not
    pay for importing scikit-learn.
    """
    return pytest.importorskip("sklearn.metrics")


def _labels(rng: np.random.Generator, n: int, high: int = C) -> np.ndarray:
    return rng.integers(0, high, size=n)


def _numpy_ccc(x: np.ndarray, y: np.ndarray) -> float:
    """The ABAW formula written out directly with numpy (population moments)."""
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    sxy = np.mean((x - x.mean()) * (y - y.mean()))
    return float(2 * sxy / (x.var() + y.var() + (x.mean() - y.mean()) ** 2))


def _multitask_data(seed: int, n: int) -> dict[str, np.ndarray]:
    """Random predictions, targets and masks for the three tasks (with invalid markers)."""
    rng = np.random.default_rng(seed)
    va_target = rng.uniform(-1, 1, size=(n, 2))
    va_mask = rng.random(n) > 0.2
    va_target[~va_mask] = -5.0  # invalid marker, must never be read
    expr_target = _labels(rng, n)
    expr_mask = rng.random(n) > 0.3
    expr_target[~expr_mask] = -1
    au_target = (rng.random((n, K)) > 0.7).astype(np.float32)
    au_mask = rng.random((n, K)) > 0.1
    au_target[~au_mask] = -1
    return {
        "va_pred": np.clip(va_target * 0.5 + rng.normal(0, 0.3, (n, 2)), -1, 1),
        "va": va_target,
        "va_mask": va_mask,
        "expr_pred": rng.normal(size=(n, C)),
        "expression": expr_target,
        "expression_mask": expr_mask,
        "au_pred": rng.normal(size=(n, K)),
        "au": au_target,
        "au_mask": au_mask,
    }


# ---------------------------------------------------------------------------------------------
# Agreement with scikit-learn
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("use_mask", [False, True])
def test_classification_metrics_match_sklearn(skm: Any, seed: int, use_mask: bool) -> None:
    rng = np.random.default_rng(seed)
    n = 200
    # Labels only from 0..4 for the targets and 1..5 for the predictions: classes 0/5 appear on
    # one side only and class 6 on neither, which exercises the zero_division convention.
    target = _labels(rng, n, 5)
    pred = _labels(rng, n, 5) + 1
    mask = rng.random(n) > 0.4 if use_mask else None
    sel = mask if mask is not None else np.ones(n, dtype=bool)
    t, p = target[sel], pred[sel]
    labels = list(range(C))

    assert M.accuracy(pred, target, mask) == pytest.approx(skm.accuracy_score(t, p), abs=1e-6)
    np.testing.assert_array_equal(
        M.confusion_matrix(pred, target, C, mask), skm.confusion_matrix(t, p, labels=labels)
    )
    prf = M.precision_recall_f1_per_class(pred, target, C, mask)
    ref = skm.precision_recall_fscore_support(t, p, labels=labels, zero_division=0)
    for ours, theirs in zip(prf, ref[:3], strict=True):
        np.testing.assert_allclose(ours, theirs, atol=1e-6)
    np.testing.assert_allclose(
        M.f1_per_class(pred, target, C, mask),
        skm.f1_score(t, p, labels=labels, average=None, zero_division=0),
        atol=1e-6,
    )
    expected_macro = skm.f1_score(t, p, labels=labels, average="macro", zero_division=0)
    assert M.macro_f1(pred, target, C, mask) == pytest.approx(expected_macro, abs=1e-6)
    assert M.expression_score(pred, target, mask) == pytest.approx(
        0.67 * expected_macro + 0.33 * skm.accuracy_score(t, p), abs=1e-6
    )


def test_macro_f1_counts_absent_classes_as_zero_like_sklearn(skm: Any) -> None:
    pred = np.array([0, 1, 0])
    target = np.array([0, 1, 1])
    ours = M.macro_f1(pred, target, 4)
    theirs = skm.f1_score(target, pred, average="macro", labels=range(4), zero_division=0)
    assert ours == pytest.approx(theirs, abs=1e-12)
    # Classes 2 and 3 are absent from both sides and pull the mean down.
    assert ours < M.macro_f1(pred, target, 2)


@pytest.mark.parametrize("use_mask", [False, True])
def test_au_metrics_match_sklearn(skm: Any, use_mask: bool) -> None:
    rng = np.random.default_rng(7)
    n = 150
    target = (rng.random((n, K)) > 0.7).astype(np.int64)
    pred = (rng.random((n, K)) > 0.6).astype(np.int64)
    target[:, 3] = 0  # a unit never present ...
    pred[:, 3] = 0  # ... and never predicted: F1 0 by zero_division=0
    mask = rng.random((n, K)) > 0.25 if use_mask else None
    sel = mask if mask is not None else np.ones((n, K), dtype=bool)

    expected = np.array(
        [skm.f1_score(target[sel[:, j], j], pred[sel[:, j], j], zero_division=0) for j in range(K)]
    )
    np.testing.assert_allclose(M.au_f1_per_unit(pred, target, mask), expected, atol=1e-6)
    expected_acc = skm.accuracy_score(target[sel], pred[sel])
    assert M.au_accuracy(pred, target, mask) == pytest.approx(expected_acc, abs=1e-6)
    assert M.au_score(pred, target, mask) == pytest.approx(
        0.5 * expected.mean() + 0.5 * expected_acc, abs=1e-6
    )
    assert expected[3] == 0.0


def test_au_accuracy_is_elementwise_not_exact_match() -> None:
    target = np.array([[1, 0, 1], [0, 0, 1]])
    pred = np.array([[1, 0, 0], [0, 0, 1]])
    # 5 of 6 entries agree although only one of two rows matches exactly.
    assert M.au_accuracy(pred, target) == pytest.approx(5 / 6)


# ---------------------------------------------------------------------------------------------
# CCC
# ---------------------------------------------------------------------------------------------


def test_ccc_of_a_vector_with_itself_is_one() -> None:
    x = np.random.default_rng(3).normal(size=500)
    assert M.ccc(x, x) == pytest.approx(1.0, abs=1e-12)
    assert M.ccc(x, -x) == pytest.approx(-1.0 / (1.0 + 2 * x.mean() ** 2 / x.var()), abs=1e-12)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_ccc_matches_direct_numpy_formula(seed: int) -> None:
    rng = np.random.default_rng(seed)
    x = rng.normal(0.2, 0.5, size=300)
    y = 0.6 * x + rng.normal(-0.1, 0.4, size=300)
    expected = _numpy_ccc(x, y)
    assert M.ccc(x, y) == pytest.approx(expected, abs=1e-9)
    assert M.ccc(y, x) == pytest.approx(expected, abs=1e-9)  # symmetric
    # A bias lowers CCC but not Pearson's r: CCC differs from correlation.
    assert M.ccc(x, y + 1.0) < expected
    assert M.ccc(x, y + 1.0) == pytest.approx(_numpy_ccc(x, y + 1.0), abs=1e-9)


def test_ccc_with_mask_ignores_invalid_markers() -> None:
    rng = np.random.default_rng(4)
    x = rng.normal(size=100)
    y = x + rng.normal(0, 0.5, size=100)
    mask = rng.random(100) > 0.3
    y_marked = y.copy()
    y_marked[~mask] = np.nan  # never read under mask=False
    assert M.ccc(x, y_marked, mask) == pytest.approx(_numpy_ccc(x[mask], y[mask]), abs=1e-9)
    with pytest.raises(InputError, match="target"):
        M.ccc(x, y_marked)


@pytest.mark.parametrize(
    ("pred", "target", "expected"),
    [
        (np.full(10, 0.3), np.full(10, 0.3), 1.0),  # identical constants
        (np.full(10, 0.3), np.full(10, -0.2), 0.0),  # different constants
        (np.zeros(10), np.zeros(10), 1.0),
        (np.full(10, 0.3), np.linspace(-1, 1, 10), 0.0),  # constant vs varying
        (np.linspace(-1, 1, 10), np.full(10, 0.3), 0.0),
        (np.array([0.5]), np.array([0.5]), 1.0),  # a single sample
        (np.array([0.5]), np.array([0.1]), 0.0),
        (np.zeros(0), np.zeros(0), 0.0),  # nothing valid
    ],
)
def test_ccc_constant_inputs_are_safe(
    pred: np.ndarray, target: np.ndarray, expected: float
) -> None:
    value = M.ccc(pred, target)
    assert not math.isnan(value)
    assert value == expected
    meter = M.VAMeter()
    both_p = np.stack([pred, pred], axis=1)
    both_t = np.stack([target, target], axis=1)
    for start in range(0, len(pred), 3):  # the streaming path agrees
        meter.update(both_p[start : start + 3], both_t[start : start + 3])
    assert meter.compute()["ccc_valence"] == expected


def test_ccc_of_float32_constants_streamed_in_many_batches_is_one() -> None:
    meter = M.VAMeter()
    value = torch.full((7, 2), 0.1, dtype=torch.float32)
    for _ in range(50):
        meter.update(value, value.clone())
    assert meter.compute()["score"] == 1.0


def test_va_score_is_mean_of_the_two_cccs_and_masks_per_sample_or_entry() -> None:
    d = _multitask_data(5, 120)
    pred, target, mask = d["va_pred"], d["va"], d["va_mask"]
    cv = _numpy_ccc(pred[mask, 0], target[mask, 0])
    ca = _numpy_ccc(pred[mask, 1], target[mask, 1])
    assert M.va_ccc(pred, target, mask) == pytest.approx((cv, ca), abs=1e-9)
    assert M.va_score(pred, target, mask) == pytest.approx((cv + ca) / 2, abs=1e-9)
    entry_mask = np.stack([mask, np.ones_like(mask)], axis=1)
    entry_mask[:, 1] &= np.arange(len(mask)) % 2 == 0
    v, a = M.va_ccc(pred, target, entry_mask)
    assert v == pytest.approx(cv, abs=1e-9)
    assert a == pytest.approx(
        _numpy_ccc(pred[entry_mask[:, 1], 1], target[entry_mask[:, 1], 1]), abs=1e-9
    )


# ---------------------------------------------------------------------------------------------
# Leaderboard arithmetic
# ---------------------------------------------------------------------------------------------


def test_abaw2_leaderboard_arithmetic() -> None:
    assert M.abaw2_expression_score(76.33, 80.69) == pytest.approx(77.77, abs=0.01)
    assert M.abaw2_au_score(50.59, 88.82) == pytest.approx(69.70, abs=0.01)
    assert M.abaw2_va_score(0.4, 0.6) == pytest.approx(0.5)
    # The weights are not symmetric: F1 weighs more than accuracy for expressions.
    assert M.abaw2_expression_score(1.0, 0.0) == pytest.approx(0.67)
    assert M.abaw2_au_score(1.0, 0.0) == pytest.approx(0.5)


# ---------------------------------------------------------------------------------------------
# Meters: streaming, merge, state, numpy/torch
# ---------------------------------------------------------------------------------------------


def _one_shot(d: dict[str, np.ndarray]) -> dict[str, dict[str, Any]]:
    au_bin = (d["au_pred"] > 0).astype(np.int64)  # logit > 0 <=> probability > 0.5
    expr_labels = d["expr_pred"].argmax(1)
    cv, ca = M.va_ccc(d["va_pred"], d["va"], d["va_mask"])
    return {
        "va": {
            "score": M.va_score(d["va_pred"], d["va"], d["va_mask"]),
            "ccc_valence": cv,
            "ccc_arousal": ca,
        },
        "expression": {
            "score": M.expression_score(d["expr_pred"], d["expression"], d["expression_mask"]),
            "macro_f1": M.macro_f1(expr_labels, d["expression"], C, d["expression_mask"]),
            "f1_per_class": M.f1_per_class(
                expr_labels, d["expression"], C, d["expression_mask"]
            ).tolist(),
        },
        "au": {
            "score": M.au_score(au_bin, d["au"], d["au_mask"]),
            "accuracy": M.au_accuracy(au_bin, d["au"], d["au_mask"]),
            "f1_per_unit": M.au_f1_per_unit(au_bin, d["au"], d["au_mask"]).tolist(),
        },
    }


def _assert_matches(result: dict[str, dict[str, Any]], expected: dict[str, dict[str, Any]]) -> None:
    for task, values in expected.items():
        for key, value in values.items():
            np.testing.assert_allclose(result[task][key], value, atol=1e-9, err_msg=f"{task}/{key}")


def _feed(meter: M.MultiTaskMeter, d: dict[str, np.ndarray], lo: int, hi: int) -> None:
    meter.update(
        {"va": d["va_pred"][lo:hi], "expression": d["expr_pred"][lo:hi], "au": d["au_pred"][lo:hi]},
        {k: d[k][lo:hi] for k in ("va", "va_mask", "expression", "expression_mask", "au")},
        mask={"au": d["au_mask"][lo:hi]},
    )


def test_streaming_over_batches_equals_one_shot() -> None:
    d = _multitask_data(11, 203)
    meter = M.MultiTaskMeter(au_from_logits=True)
    bounds = [0, 17, 17, 64, 150, 151, 203]  # includes an empty and a one-sample batch
    for lo, hi in itertools.pairwise(bounds):
        _feed(meter, d, lo, hi)
    result = meter.compute()
    _assert_matches(result, _one_shot(d))
    assert set(result["va"]) == {
        "score",
        "ccc_valence",
        "ccc_arousal",
        "mse_valence",
        "mse_arousal",
    }
    assert set(result["expression"]) == {
        "score",
        "macro_f1",
        "accuracy",
        "f1_per_class",
        "precision_per_class",
        "recall_per_class",
    }
    assert set(result["au"]) == {
        "score",
        "mean_f1",
        "accuracy",
        "f1_per_unit",
        "precision_per_unit",
        "recall_per_unit",
    }
    assert all(isinstance(v, float) for v in result["va"].values())
    f1_expr, f1_au = result["expression"]["f1_per_class"], result["au"]["f1_per_unit"]
    assert isinstance(f1_expr, list)
    assert len(f1_expr) == C
    assert isinstance(f1_au, list)
    assert len(f1_au) == K
    flat = meter.compute_flat()
    assert flat["expression/macro_f1"] == result["expression"]["macro_f1"]
    assert meter["va"].count == (int(d["va_mask"].sum()),) * 2


def test_merge_of_two_meters_equals_one_meter_over_both_halves() -> None:
    d = _multitask_data(12, 160)
    whole = M.MultiTaskMeter(au_from_logits=True)
    _feed(whole, d, 0, 160)
    first = M.MultiTaskMeter(au_from_logits=True)
    second = M.MultiTaskMeter(au_from_logits=True)
    _feed(first, d, 0, 70)
    _feed(second, d, 70, 160)
    merged = first.merge(second).compute()
    expected = whole.compute()
    _assert_matches(merged, expected)
    with pytest.raises(InputError, match="other"):
        M.ExpressionMeter(7).merge(M.ExpressionMeter(5))
    with pytest.raises(InputError, match="other"):
        M.VAMeter().merge(M.AUMeter())  # type: ignore[arg-type]


def test_reset_and_state_dict_round_trip() -> None:
    d = _multitask_data(13, 90)
    meter = M.MultiTaskMeter(au_from_logits=True)
    _feed(meter, d, 0, 90)
    buffer = io.BytesIO()
    torch.save(meter.state_dict(), buffer)
    buffer.seek(0)
    restored = M.MultiTaskMeter(au_from_logits=True)
    restored.load_state_dict(torch.load(buffer, weights_only=True))
    assert restored.compute() == meter.compute()
    meter.reset()
    assert meter.compute()["expression"]["accuracy"] == 0.0
    assert meter["au"].count == 0
    with pytest.raises(InputError, match="confusion"):
        M.ExpressionMeter(5).load_state_dict(restored["expression"].state_dict())


def test_numpy_and_torch_inputs_give_equal_results() -> None:
    d = _multitask_data(14, 80)
    t = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in d.items()}
    assert M.va_score(t["va_pred"].float(), t["va"], t["va_mask"]) == pytest.approx(
        M.va_score(d["va_pred"].astype(np.float32), d["va"], d["va_mask"]), abs=1e-12
    )
    assert M.expression_score(t["expr_pred"], t["expression"], t["expression_mask"]) == (
        M.expression_score(d["expr_pred"], d["expression"], d["expression_mask"])
    )
    au_bin = d["au_pred"] > 0
    assert M.au_score(torch.from_numpy(au_bin), t["au"], t["au_mask"]) == (
        M.au_score(au_bin, d["au"], d["au_mask"])
    )
    np_meter = M.MultiTaskMeter(au_from_logits=True)
    torch_meter = M.MultiTaskMeter(au_from_logits=True)
    _feed(np_meter, d, 0, 80)
    _feed(torch_meter, t, 0, 80)  # type: ignore[arg-type]
    assert np_meter.compute() == torch_meter.compute()
    # requires_grad and half precision tensors are accepted too
    x = torch.linspace(-1, 1, 50, requires_grad=True)
    assert M.ccc(x, x.detach().half()) == pytest.approx(1.0, abs=1e-3)


def test_expression_meter_accepts_logits_probabilities_or_labels() -> None:
    d = _multitask_data(15, 60)
    logits = torch.from_numpy(d["expr_pred"])
    results = []
    for pred in (logits, logits.softmax(1), logits.argmax(1)):
        meter = M.ExpressionMeter()
        meter.update(pred, d["expression"], d["expression_mask"])
        results.append(meter.compute())
    assert results[0] == results[1] == results[2]


def test_au_meter_probabilities_and_logits_agree() -> None:
    d = _multitask_data(16, 60)
    logits = torch.from_numpy(d["au_pred"])
    by_logits = M.AUMeter(from_logits=True)
    by_logits.update(logits, d["au"], d["au_mask"])
    by_probs = M.AUMeter()
    by_probs.update(logits.sigmoid(), d["au"], d["au_mask"])
    assert by_logits.compute() == by_probs.compute()
    strict = M.AUMeter(threshold=0.8)
    strict.update(logits.sigmoid(), d["au"], d["au_mask"])
    assert strict.counts[:, :2].sum() < by_probs.counts[:, :2].sum()  # fewer positives
    with pytest.raises(InputError, match="from_logits=True"):
        M.AUMeter().update(logits, d["au"], d["au_mask"])


def test_multitask_meter_reads_model_output_and_batch_masks() -> None:
    d = _multitask_data(17, 40)
    output = SimpleNamespace(
        va=torch.from_numpy(d["va_pred"]),
        expression=torch.from_numpy(d["expr_pred"]),
        au=None,  # a model without the AU head
    )
    batch = {k: torch.from_numpy(np.ascontiguousarray(d[k])) for k in d}
    meter = M.MultiTaskMeter(("va", "expression", "au"))
    meter.update(output, batch)
    result = meter.compute()
    assert result["va"]["score"] == pytest.approx(
        M.va_score(d["va_pred"], d["va"], d["va_mask"]), abs=1e-12
    )
    assert meter["au"].count == 0
    only_va = M.MultiTaskMeter("va")
    assert only_va.tasks == ("va",)
    with pytest.raises(InputError, match="tasks"):
        M.MultiTaskMeter(("va", "emotion"))
    with pytest.raises(InputError, match=r"target\['expression'\]"):
        meter.update({"expression": d["expr_pred"]}, {"va": d["va"]})


# ---------------------------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("call", "name"),
    [
        (lambda: M.ccc(np.zeros(3), np.zeros(4)), "target"),
        (lambda: M.ccc(np.zeros((3, 2)), np.zeros((3, 2))), "pred"),
        (lambda: M.ccc(np.zeros(3), np.zeros(3), np.ones(4, dtype=bool)), "mask"),
        (lambda: M.va_score(np.zeros((5, 3)), np.zeros((5, 3))), "pred"),
        (lambda: M.va_score(np.zeros((5, 2)), np.zeros((4, 2))), "target"),
        (lambda: M.accuracy(np.zeros((5, 7)), np.zeros(5)), "pred_labels"),
        (lambda: M.macro_f1(np.zeros(5), np.zeros(6), C), "target_labels"),
        (lambda: M.confusion_matrix(np.zeros(3), np.array([0, 1, 9]), C), "target_labels"),
        (lambda: M.expression_score(np.zeros((5, 6)), np.zeros(5)), "pred"),
        (lambda: M.au_score(np.zeros((5, 12)), np.zeros((5, 11))), "target_binary"),
        (lambda: M.au_f1_per_unit(np.full((5, 12), 0.7), np.zeros((5, 12))), "pred_binary"),
        (lambda: M.VAMeter().update(np.zeros(5), np.zeros(5)), "pred"),
        (lambda: M.ExpressionMeter().update(np.zeros((4, 7)), np.zeros((4, 7))), "target"),
        (lambda: M.AUMeter().update(np.zeros((4, 10)), np.zeros((4, 10))), "pred"),
        (lambda: M.AUMeter().update(np.zeros((4, 12)), np.zeros((4, 12)), np.ones(3)), "mask"),
        (lambda: M.AUMeter(threshold=1.5), "threshold"),
    ],
)
def test_bad_input_raises_input_error_naming_the_argument(call: Any, name: str) -> None:
    with pytest.raises(InputError) as info:
        call()
    assert str(info.value).startswith(name) or f" {name} " in str(info.value)
    assert isinstance(info.value, ValueError)


def test_masked_out_invalid_labels_are_not_validated() -> None:
    target = np.array([0, -1, 3, 99])
    mask = np.array([True, False, True, False])
    assert M.accuracy(np.array([0, 2, 3, 1]), target, mask) == 1.0
    meter = M.ExpressionMeter()
    meter.update(np.array([0, 2, 3, 1]), target, mask)
    assert meter.count == 2
    # float targets with NaN and score rows with NaN are fine where the mask is False ...
    scores = np.eye(C)[[0, 2, 3, 1]]
    scores[1] = np.nan
    float_target = np.array([0.0, np.nan, 3.0, 0.5])
    assert M.expression_score(scores, float_target, mask) == pytest.approx(
        M.expression_score(np.array([0, 3]), np.array([0, 3]))
    )
    # ... and rejected where it is True
    with pytest.raises(InputError, match="pred"):
        M.expression_score(scores, np.zeros(4))
    with pytest.raises(InputError, match="target"):
        M.expression_score(np.eye(C)[[0, 2, 3, 1]], float_target)


def test_sync_without_distributed_is_a_no_op() -> None:
    meter = M.ExpressionMeter()
    meter.update(np.array([0, 1]), np.array([0, 0]))
    before = meter.compute()
    assert meter.sync() is meter
    assert meter.compute() == before


# ---------------------------------------------------------------------------------------------
# Distributed sync with a real 2-process gloo group
# ---------------------------------------------------------------------------------------------

_DIST_N = 96
_DIST_SEED = 21


def _dist_worker(rank: int, world_size: int, tmp: str) -> None:
    import torch.distributed as dist

    dist.init_process_group(
        "gloo", init_method=f"file://{tmp}/rendezvous", rank=rank, world_size=world_size
    )
    try:
        d = _multitask_data(_DIST_SEED, _DIST_N)
        half = _DIST_N // world_size
        lo = rank * half
        meter = M.MultiTaskMeter(au_from_logits=True)
        _feed(meter, d, lo, lo + half // 3)  # two uneven batches per process
        _feed(meter, d, lo + half // 3, lo + half)
        meter.sync()
        Path(tmp, f"rank{rank}.json").write_text(json.dumps(meter.compute()))
    finally:
        dist.destroy_process_group()


def test_sync_across_two_gloo_processes_equals_one_process(tmp_path: Path) -> None:
    import torch.distributed as dist
    import torch.multiprocessing as torch_mp

    if not dist.is_available():
        pytest.skip("torch.distributed is not available in this torch build")
    # "fork" on Linux skips re-importing torch in each worker (seconds on a busy machine); the
    # workers use only the CPU and gloo, so forking is safe. Elsewhere fall back to "spawn".
    start_method = "fork" if sys.platform == "linux" else "spawn"
    torch_mp.start_processes(
        _dist_worker, args=(2, str(tmp_path)), nprocs=2, join=True, start_method=start_method
    )
    expected = _one_shot(_multitask_data(_DIST_SEED, _DIST_N))
    results = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    for result in results:
        _assert_matches(result, expected)
    assert results[0] == results[1]  # every process holds the same totals
