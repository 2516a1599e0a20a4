"""The cuts' choice on validation: the fewest off-intent ads within a tolerance of the best objective (the
objective alone could never prefer a score floor: cutting a list's end never raises HR or NDCG)."""

from __future__ import annotations

import pytest

from adgen.search.ci_eval import MethodReport
from adgen.search.ci_tuning import Cuts, TuningGrid, choose_floor


def _report(ndcg: float, hr50: float, off: float | None) -> MethodReport:
    return MethodReport(
        method="floor",
        queries=10,
        hr={"HR@10": hr50, "HR@50": hr50},
        ndcg10=ndcg,
        map=ndcg,
        acr=1.0,
        avg_cis_per_query=3.0,
        avg_ads_per_query=20.0,
        ms_p50=0.0,
        ms_mean=0.0,
        off_intent10=off,
    )


def _floor(value: float, link: float = 0.0) -> Cuts:
    return Cuts(relative_floor=value, min_link_weight=link)


def test_the_floor_with_fewest_off_intent_ads_within_the_tolerance_is_kept():
    candidates = [
        (_floor(0.0), _report(0.90, 1.00, 0.30)),
        (_floor(0.1), _report(0.90, 1.00, 0.20)),  # free: same objective, fewer off-intent ads
        (_floor(0.2), _report(0.89, 1.00, 0.10)),  # costs 0.005 of the objective
        (_floor(0.3), _report(0.85, 0.98, 0.02)),  # costs 0.035: beyond the tolerance however clean
    ]
    assert choose_floor(candidates, tolerance=0.0)[0] == _floor(0.1)
    assert choose_floor(candidates, tolerance=0.006)[0] == _floor(0.2)
    assert choose_floor(candidates, tolerance=1.0)[0] == _floor(0.3)
    assert choose_floor(candidates, tolerance=0.006) == candidates[2]


def test_a_support_cut_that_raises_the_objective_sets_the_bar_the_others_are_judged_by():
    candidates = [
        (_floor(0.0), _report(0.90, 1.00, 0.40)),
        (_floor(0.1), _report(0.89, 1.00, 0.20)),  # within 0.006 of 0.95, not of 0.96
        (_floor(0.0, 0.2), _report(0.92, 1.00, 0.30)),  # the support cut drops junk ranked above related ads
        (_floor(0.0, 1.0), _report(0.92, 1.00, 0.30)),  # as clean, a harder cut: the lower one is kept
    ]
    assert choose_floor(candidates, tolerance=0.006)[0] == _floor(0.0, 0.2)
    assert choose_floor(candidates, tolerance=0.02)[0] == _floor(0.1)


def test_without_anything_to_gain_the_lower_floor_is_kept():
    same = [(_floor(f, link), _report(0.9, 1.0, 0.1)) for f in (0.0, 0.1, 0.3) for link in (0.5, 0.0)]
    assert choose_floor(same, tolerance=1.0)[0] == _floor(0.0, 0.0)
    assert choose_floor([(_floor(0.0), _report(0.9, 1.0, None))], tolerance=0.0)[0] == _floor(0.0)
    with pytest.raises(ValueError, match="cuts is empty"):
        choose_floor([], tolerance=0.0)


def test_the_grid_refuses_a_floor_outside_zero_to_one():
    with pytest.raises(ValueError, match="relative_floor"):
        TuningGrid(relative_floor=[0.0, 1.0])
    with pytest.raises(ValueError, match="min_link_weight"):
        TuningGrid(min_link_weight=[0.0, 1.5])
    assert 0.0 in TuningGrid().relative_floor and TuningGrid().floor_tolerance >= 0
    assert 0.0 in TuningGrid().min_link_weight


def _variant(name: str, served: float, pure_ndcg: float) -> dict[str, object]:
    return {"name": name, "objective": served, "pure_valid": _report(pure_ndcg, 0.9, 0.5).model_dump()}


def test_a_variant_ahead_by_noise_on_the_served_path_loses_to_a_working_model():
    """World seed 2's case: the served objectives differ by 0.0002, the CI models by 0.8 of NDCG@10."""
    from adgen.commands.search_quality import VARIANT_TOLERANCE, choose_variant

    rows = [
        _variant("default", 0.9662, 0.844),
        _variant("no augmentation", 0.9664, 0.052),
        _variant("fewer CIs", 0.9369, 0.95),  # the best model, but the served path pays 0.03 for it
    ]
    assert choose_variant(rows)["name"] == "default"
    assert choose_variant(rows, tolerance=0.0)["name"] == "no augmentation"  # the served objective alone
    assert choose_variant(rows, tolerance=0.05)["name"] == "fewer CIs"
    assert VARIANT_TOLERANCE < 0.03
    with pytest.raises(ValueError, match="no build variant"):
        choose_variant([])
