"""Dynamic sampling, tail batching and asynchronous rollouts: the scheduler's decisions on
hand-made outcomes, then the real loop (exact resume, staleness, refusals)."""

import json
import os
import signal

import pytest

from redrl.config import load_config
from redrl.scheduling import GroupOutcome, RolloutScheduler, is_informative
from redrl.trainer import train


def _draw_from(start=0):
    state = {"next": start}

    def draw(n):
        out = list(range(state["next"], state["next"] + n))
        state["next"] += n
        return out

    return draw


def _sample(long=(), flat=(), calls=None):
    """Prompts in ``long`` write past any short budget; prompts in ``flat`` have equal rewards."""

    def sample(prompts, budget):
        if calls is not None:
            calls.append((list(prompts), budget))
        return [GroupOutcome(p, p in long and budget < 100, p not in flat, tokens=10) for p in prompts]

    return sample


def test_is_informative_follows_the_advantage_statistics():
    assert not is_informative([0.0, 0.0, 0.0])
    assert not is_informative([1.0, 1.0])
    assert is_informative([0.0, 1.0, 0.0])
    assert not is_informative([1.0, None, None])  # one graded row: no statistics
    assert not is_informative([0.0, 0.0], 1.0)  # GRPO: the teacher is not in its group
    assert is_informative([0.0, 0.0], 1.0, with_teacher=True)  # RED: all fail, teacher right: Extend
    assert not is_informative([1.0, 1.0], 1.0, with_teacher=True)


def test_synchronous_is_one_round_at_the_full_budget():
    calls = []
    scheduler = RolloutScheduler(4, 100)
    out = scheduler.collect(_draw_from(), _sample(flat={1}, calls=calls))
    assert scheduler.synchronous and calls == [([0, 1, 2, 3], 100)]
    assert [g.prompt for g in out.groups] == [0, 1, 2, 3] and out.rounds == 1


def test_dynamic_sampling_draws_until_the_step_holds_informative_groups():
    calls = []
    scheduler = RolloutScheduler(4, 100, dynamic=True)
    out = scheduler.collect(_draw_from(), _sample(flat={1, 3, 5}, calls=calls))
    # round 1: 0..3, two flat (the loss rate becomes 0.2 * 2/4 = 0.1); round 2 needs 2 groups and
    # launches ceil(e + 2 sqrt(e)) = 2 more, e = 2 * 0.1 / 0.9: 4..7 (5 flat); 7 is surplus
    assert calls == [([0, 1, 2, 3], 100), ([4, 5, 6, 7], 100)]
    assert [g.prompt for g in out.groups] == [0, 2, 4, 6] and scheduler.carry == [7]
    assert (out.rounds, out.prompts_sampled, out.filtered, out.surplus, out.rollout_tokens) == (2, 8, 3, 1, 80)


def test_dynamic_sampling_fills_the_step_with_set_aside_groups_at_the_round_cap():
    scheduler = RolloutScheduler(4, 100, dynamic=True, max_rounds=2)
    out = scheduler.collect(_draw_from(), _sample(flat=set(range(10))))
    # round 1: 0..3 all flat (rate 0.2); round 2: 4 + ceil(1 + 2) = 7 prompts, only 10 informative;
    # at the cap 0, 1, 2 fill the step
    assert [g.prompt for g in out.groups] == [10, 0, 1, 2] and out.filtered == 7


def test_groups_beyond_the_step_open_the_next_one():
    calls = []
    scheduler = RolloutScheduler(2, 100, dynamic=True)
    draw, sample = _draw_from(), _sample(flat={0, 1}, calls=calls)
    first = scheduler.collect(draw, sample)  # 0, 1 flat (rate 0.2); then 2 + 2 launched, all kept
    assert [g.prompt for g in first.groups] == [2, 3] and first.surplus == 2 and scheduler.carry == [4, 5]
    second = scheduler.collect(draw, sample)  # 4, 5 first; they are the two extra prompts
    assert calls[-1] == ([4, 5, 6, 7], 100) and [g.prompt for g in second.groups] == [4, 5]


def test_tail_batching_defers_long_prompts_to_a_long_round_and_loses_none():
    calls = []
    scheduler = RolloutScheduler(2, 100, tail_max_new_tokens=20)
    draw, sample = _draw_from(), _sample(long={1, 2, 4}, calls=calls)
    first = scheduler.collect(draw, sample)
    assert calls == [([0, 1], 20), ([2, 3], 20)]  # 1 deferred (rate 0.1): 1 + 1 launched
    assert [g.prompt for g in first.groups] == [0, 3] and first.deferred == 2 and scheduler.tail == [1, 2]
    second = scheduler.collect(draw, sample)  # the queue holds a step's worth: the long round
    assert second.long_round and calls[2] == ([1, 2], 100)
    assert [g.prompt for g in second.groups] == [1, 2] and scheduler.tail == []
    third = scheduler.collect(draw, sample)  # rate 0.18: 2 + 2 launched, 4 deferred, 7 surplus
    assert calls[3] == ([4, 5, 6, 7], 20)
    assert [g.prompt for g in third.groups] == [5, 6] and scheduler.tail == [4] and scheduler.carry == [7]
    trained = [g.prompt for c in (first, second, third) for g in c.groups]
    assert sorted(trained + scheduler.tail + scheduler.carry) == list(range(8))  # trained or waiting


def test_the_scheduler_resumes_from_its_state():
    a = RolloutScheduler(2, 100, tail_max_new_tokens=20)
    draw, sample = _draw_from(), _sample(long={1, 2, 4})
    a.collect(draw, sample)
    b = RolloutScheduler(2, 100, tail_max_new_tokens=20)
    b.load_state_dict(json.loads(json.dumps(a.state_dict())))
    assert [g.prompt for g in b.collect(_draw_from(4), sample).groups] == [
        g.prompt for g in a.collect(draw, sample).groups
    ]


def test_a_step_short_of_groups_at_the_cap_takes_waiting_prompts_at_the_full_budget():
    calls = []
    scheduler = RolloutScheduler(2, 100, max_rounds=2, tail_max_new_tokens=20)
    out = scheduler.collect(_draw_from(), _sample(long=set(range(6)), calls=calls))
    assert calls == [([0, 1], 20), ([2, 3, 4, 5], 20), ([0, 1], 100)]
    assert [g.prompt for g in out.groups] == [0, 1] and scheduler.tail == [2, 3, 4, 5]


def test_bad_budgets_are_refused():
    with pytest.raises(ValueError, match="tail_max_new_tokens"):
        RolloutScheduler(2, 100, tail_max_new_tokens=100)
    with pytest.raises(ValueError, match="tail_max_new_tokens"):
        load_config("tiny", rollout={"tail_max_new_tokens": 500})
    with pytest.raises(ValueError, match="async_staleness"):
        load_config("tiny", rollout={"async_staleness": 1, "engine": "hf"})
    with pytest.raises(ValueError, match="does not combine"):
        load_config("tiny", rollout={"async_staleness": 1, "dynamic_sampling": True})


# ------------------------------------------------------------------------------------------------
# The real loop
# ------------------------------------------------------------------------------------------------


def _cfg(tiny_assets, out, method="red", rollout=None, **train_settings):
    return load_config(
        "tiny",
        model={"path": str(tiny_assets.base)},
        optim={"lr": 2e-4},
        data={"train": str(tiny_assets.train)},
        rollout={"group_size": 3, "max_new_tokens": 48, **(rollout or {})},
        train={"method": method, "steps": 4, "prompts_per_step": 4, "out": str(out), **train_settings},
        teacher={"path": None},
    )


def _metrics(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def _stopped_and_resumed(tiny_assets, tmp_path, monkeypatch, method, rollout, **settings):
    """The run stopped by SIGTERM after step 2 and resumed, and the uninterrupted run."""
    import redrl.trainer as trainer
    from redrl.trainer import TrainingStopped

    train(_cfg(tiny_assets, tmp_path / "reference", method, rollout, **settings), progress=False)
    real, calls = trainer.step_record, {"n": 0}

    def preempted(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            os.kill(os.getpid(), signal.SIGTERM)
        return real(*args, **kwargs)

    monkeypatch.setattr(trainer, "step_record", preempted)
    with pytest.raises(TrainingStopped):
        train(_cfg(tiny_assets, tmp_path / "run", method, rollout, save_every=1, **settings), progress=False)
    monkeypatch.setattr(trainer, "step_record", real)
    train(_cfg(tiny_assets, tmp_path / "run", method, rollout, save_every=1, resume=True, **settings), progress=False)
    return _metrics(tmp_path / "run"), _metrics(tmp_path / "reference")


@pytest.mark.parametrize(
    "method, rollout",
    [
        ("red", {"dynamic_sampling": True, "tail_max_new_tokens": 24}),
        ("grpo", {"async_staleness": 1}),
    ],
)
def test_stopped_and_resumed_equals_the_uninterrupted_run(tiny_assets, tmp_path, monkeypatch, method, rollout):
    resumed, reference = _stopped_and_resumed(tiny_assets, tmp_path, monkeypatch, method, rollout)
    assert [m["step"] for m in resumed] == [1, 2, 3, 4]
    keys = ["loss", "grad_norm", "online_accuracy"]
    keys += ["prompts_sampled", "groups_deferred", "long_round"] if "tail_max_new_tokens" in rollout else ["staleness"]
    for a, b in zip(resumed, reference, strict=True):
        assert [a[k] for k in keys] == [b[k] for k in keys], a["step"]
    if "tail_max_new_tokens" in rollout:  # the mechanisms acted: something was deferred or filtered
        assert sum(m["groups_deferred"] + m["groups_filtered"] for m in reference) > 0


def test_asynchronous_rollouts_are_at_most_k_steps_old_and_reproducible(tiny_assets, tmp_path):
    runs = []
    for name in ("a", "b"):
        train(_cfg(tiny_assets, tmp_path / name, "grpo", {"async_staleness": 2}, steps=5), progress=False)
        runs.append(_metrics(tmp_path / name))
    assert [m["staleness"] for m in runs[0]] == [0, 1, 2, 2, 2]
    assert [m["loss"] for m in runs[0]] == [m["loss"] for m in runs[1]]
    assert all(m["is_capped_fraction"] is not None for m in runs[0])  # the ratio is against the sampler's log-probs


def test_mechanisms_refuse_what_they_cannot_run(tiny_assets, tmp_path):
    with pytest.raises(ValueError, match="relift.*synchronously"):
        train(_cfg(tiny_assets, tmp_path / "r", "relift", {"async_staleness": 1}), progress=False)
    cfg = _cfg(tiny_assets, tmp_path / "d", "grpo")
    cfg.loss.decoupled = True
    with pytest.raises(ValueError, match="loss.decoupled needs"):
        train(cfg, progress=False)


def test_the_planning_replay_charges_rounds_by_their_slowest_worker():
    from redrl.rollout_plan import Plan, linear_cost, measured_groups, replay

    def plan(workers):  # every group's two rows stop after 3 and 1 tokens; a decoding step costs 1 s
        return Plan(workers, 2, 2, 10, measured_groups([[3, 1]]), linear_cost(1.0, 0.0), train_seconds=2.0)

    one = replay(plan(1), RolloutScheduler(2, 10), steps=3)
    # one worker decodes the 4 rows together: 3 steps; plus the 2 s optimizer step
    assert (one.rollout_seconds, one.seconds_per_step, one.idle_fraction, one.decoded_tokens) == (3.0, 5.0, 0.0, 8.0)
    assert replay(plan(1), RolloutScheduler(2, 10), steps=3, staleness=1).seconds_per_step == 3.0  # max(3, 2)
    four = replay(plan(4), RolloutScheduler(2, 10), steps=3)
    assert four.rollout_seconds == 3.0 and four.idle_fraction == 0.5  # two of four workers have no group
