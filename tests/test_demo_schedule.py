"""The demo's runs start in the order that leaves the fewest idle cores (its slowest runs no longer end alone), and
the order changes when runs start, never what they compute."""

from __future__ import annotations

from pathlib import Path

import pytest

from timm_deit_distill.commands.demo.regime import DEFAULT_REGIME, MODES
from timm_deit_distill.commands.demo.runner import Job, _makespan, job_cost, schedule


def _jobs(modes=MODES) -> list[Job]:
    return [Job(DEFAULT_REGIME, Path("d"), Path("r")),
            *(Job(DEFAULT_REGIME, Path("d"), Path("r"), mode, seed) for seed in DEFAULT_REGIME.seeds for mode in modes)]


def test_costs_follow_the_measured_kinds_of_run():
    costs = {job.label: job_cost(job) for job in _jobs()}
    assert costs["teacher"] == pytest.approx(60 * 0.45) and costs["none-seed0"] == DEFAULT_REGIME.epochs
    assert costs["none-seed0"] < costs["usual-seed0"] == costs["hard-seed0"] < costs["deit_soft-seed0"]
    assert costs["deit_soft-seed0"] < costs["deit_hard-seed0"]


def test_two_workers_no_longer_end_with_one_run_alone():
    jobs = _jobs(("none", "deit_soft", "deit_hard"))  # 10 runs: every order of kinds is simulated
    costs = [job_cost(j) for j in jobs]
    after = [0 if j.needs_teacher else None for j in jobs]
    old = sorted(range(len(jobs)), key=lambda i: jobs[i].needs_teacher)  # teacher-free first, as before
    # By hand, with the old order: worker A teacher 0-27, none1 27-57, soft0 -91.2, soft1 -125.4, soft2 -159.6;
    # worker B none0 0-30, none2 30-60, hard0 -94.8, hard1 -129.6, hard2 -164.4: A idles its last 4.8 units.
    assert _makespan(costs, after, old, 2) == pytest.approx(164.4)
    order = schedule(jobs, 2)
    assert sorted(order) == list(range(len(jobs))) and jobs[order[0]].mode is None
    # The planned order keeps both workers busy to within a unit of the ideal (every run's work / 2).
    assert _makespan(costs, after, order, 2) == pytest.approx(162.6)
    assert _makespan(costs, after, order, 2) - sum(costs) / 2 < 1


def test_the_whole_table_is_planned_without_idle_cores_and_never_worse_than_before():
    jobs = _jobs()  # 16 runs: too many orders to simulate each; longest first is tried beside the old order
    costs = [job_cost(j) for j in jobs]
    after = [0 if j.needs_teacher else None for j in jobs]
    old = sorted(range(len(jobs)), key=lambda i: jobs[i].needs_teacher)
    for workers in (2, 3, 4):
        order = schedule(jobs, workers)
        assert sorted(order) == list(range(len(jobs))) and jobs[order[0]].mode is None
        assert _makespan(costs, after, order, workers) <= _makespan(costs, after, old, workers)
    assert _makespan(costs, after, schedule(jobs, 2), 2) - sum(costs) / 2 < 1


def test_no_run_needing_the_teacher_is_planned_to_start_before_it_ends():
    jobs = _jobs()
    # Simulated start times from the planned order: every dependant starts after the teacher's 27 units.
    costs = [job_cost(j) for j in jobs]
    free, start = [0.0, 0.0], {}
    for i in schedule(jobs, 2):
        w = min(range(2), key=free.__getitem__)
        begin = max(free[w], costs[0] if jobs[i].needs_teacher else 0.0)
        start[i], free[w] = begin, begin + costs[i]
    assert all(start[i] >= costs[0] for i, j in enumerate(jobs) if j.needs_teacher)


def test_one_worker_keeps_the_old_order():
    jobs = _jobs()
    assert [jobs[i].label for i in schedule(jobs, 1)][:4] == ["teacher", "none-seed0", "none-seed1", "none-seed2"]
