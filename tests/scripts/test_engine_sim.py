"""scripts/engine_sim.py: the real engine over a cost model on a simulated clock. The default engine admits
full groups (long gaps), a stall budget bounds the gaps, staging keeps them bounded with fewer, larger
admissions; every request completes."""

from __future__ import annotations

from tests.conftest import load_script


def test_budget_and_staging_shape_the_gaps():
    sim = load_script("engine_sim")
    base = ["--requests", "96", "--slots", "64", "--new-tokens", "24"]
    default = sim.main(base)
    budget = sim.main(base + ["--max-decode-stall-ms", "130"])
    staged = sim.main(base + ["--max-decode-stall-ms", "130", "--stage-vision-images", "2"])
    assert default["mean_admitted"] == 16 and default["gap_max_ms"] > 16 * 46  # a whole group's vision
    assert budget["gap_max_ms"] <= 130 + 46 + 10  # the budget, one probing request more, a decode step
    assert staged["gap_max_ms"] <= 130 + 46 + 10
    assert staged["mean_admitted"] > 3 * budget["mean_admitted"]  # vision left the admissions
    assert staged["images_per_s"] > budget["images_per_s"]
    # a cap of 4 images per slice (184 ms of vision) still stalls no longer than the budget: slices are sized by
    # the measured encode time; the gap is the stall plus one decode step (10.2 ms at 64 slots)
    capped = sim.main(base + ["--max-decode-stall-ms", "130", "--stage-vision-images", "4"])
    assert capped["gap_max_ms"] <= 130 + 10.2 + 1e-6
