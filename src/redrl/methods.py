"""The training methods: one small settings object each, all run by the same loop.

Fairness rule: every method sees the same prompts in the same order, the same teacher data, the
same number of optimizer steps and rollouts per prompt, and the shared hyperparameters of the
config; only the fields below differ, and the learning rate, which each method takes from the same
grid chosen on the validation split (``redrl sweep``, :mod:`redrl.sweep`). Each method names its source.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

__all__ = ["COMPARED", "METHODS", "Method", "with_prefix"]


@dataclass(frozen=True)
class Method:
    """What distinguishes one method from another.

    Attributes:
        name: the key in ``METHODS``.
        rollouts: samples ``G`` rollouts per prompt and trains on them with the clipped surrogate.
        offline: puts the prompt's teacher trace into its group as one more row.
        objective: ``"red"`` (:func:`redrl.objectives.red_loss`, Eq. 10), ``"sft"``
            (:func:`redrl.objectives.sft_loss`, NLL of the teacher traces), ``"srft"``
            (:func:`redrl.objectives.srft_loss`) or ``"distill"`` (the KLs to a teacher model).
        offline_ratio: the teacher row's ratio (:data:`redrl.objectives.OFFLINE_RATIOS`).
        regulator: weight the teacher rows by the entropy regulator's ``w`` (else ``w = 1``).
        strategy: what the method does beyond its loss (:data:`redrl.strategies.STRATEGIES`):
            ``"plain"`` (an all-fail group has no signal, as GRPO), ``"sft_buffer"`` (ReLIFT: a
            prompt whose rollouts all failed waits in a buffer; when it holds
            ``baselines.relift_buffer`` prompts, that step is one SFT step on their teacher traces
            instead of an RL step), ``"teacher_prefix"`` (BREAD: an all-fail group is sampled again
            after the shortest teacher prefix in ``baselines.bread_fractions`` that lets one of them
            succeed; the prefix joins the prompt, so the loss sees student tokens only) or
            ``"answer_posterior"`` (RAVR: answer-conditioned samples rewarded by their utility and
            taught to the question-only prompt).
        stages: a staged method: the methods run one after the other, each from the previous
            one's final checkpoint, splitting ``train.steps`` (``baselines.staged_sft_fraction``).
        source: where the method comes from.
        distill_prefix, distill_alpha: for a method that distils a teacher model, the preset of
            ``distill.prefix`` (``"teacher"``: the traces; ``"student"``: its rollouts) and ``distill.alpha``.
        advantage: the advantage estimator (:data:`redrl.objectives.ADVANTAGE_ESTIMATORS`).
        auxiliaries: models beside the policy, frozen or trained, by name
            (:data:`redrl.auxiliary.AUXILIARIES`): ``"teacher"``, the distillation teacher.
        conditioning: what the prompts are conditioned on (:data:`redrl.conditioning.CONDITIONINGS`):
            the prompts the method samples from and those its loss scores under.
        records: the training records the method reads (:data:`redrl.data.training.RECORD_VIEWS`):
            ``"as_given"``, or ``"budgets"`` (one per problem and thinking budget, BARD).
        reward: how a rollout's grade becomes its reward (:data:`redrl.reward_shapes.REWARD_SHAPES`):
            ``"correct"`` (the grade), ``"budget"`` / ``"budget_additive"`` (BARD: joined with budget fidelity).
        critics: with the ``"critics"`` auxiliary, the preset of ``critic.count`` (value models).
        value_masks: the preset ``(k, h)`` of ``critic.advantage_mask`` and ``critic.entropy_mask``
            (AsyPPO's shares of tokens masked by the critics' disagreement; 0 masks nothing).
    """

    name: str
    rollouts: bool
    offline: bool
    objective: str = "red"
    offline_ratio: str = "shift"
    regulator: bool = False
    strategy: str = "plain"
    stages: tuple[str, ...] = ()
    source: str = ""
    distill_prefix: str = "teacher"
    distill_alpha: float = 1.0
    advantage: str = "group"
    auxiliaries: tuple[str, ...] = ()
    conditioning: str = "none"
    records: str = "as_given"
    reward: str = "correct"
    critics: int = 0
    value_masks: tuple[float, float] = (0.0, 0.0)


METHODS: dict[str, Method] = {
    "red": Method(
        "red",
        rollouts=True,
        offline=True,
        offline_ratio="shift",
        regulator=True,
        source="RED, arXiv 2508.16677: policy shift (Eq. 8) + entropy regulator (Eqs. 9, 11) in Eq. 10",
    ),
    "grpo": Method(
        "grpo",
        rollouts=True,
        offline=False,
        source="GRPO, arXiv 2402.03300: group-normalised advantages, clipped surrogate, no teacher",
    ),
    "sft": Method(
        "sft",
        rollouts=False,
        offline=True,
        objective="sft",
        source="supervised fine-tuning: token-mean NLL of the teacher traces",
    ),
    "sft_grpo": Method(
        "sft_grpo",
        rollouts=True,
        offline=True,
        stages=("sft", "grpo"),
        source="staged SFT -> GRPO (the usual two-stage recipe): SFT, then GRPO from its final checkpoint",
    ),
    "srft": Method(
        "srft",
        rollouts=True,
        offline=True,
        objective="srft",
        source="SRFT, arXiv 2506.19767, as its paper writes it: entropy-weighted NLL and clipped RL on the demonstration, "
        "w_rl-weighted NLL on correct rollouts, log π on wrong ones",
    ),
    "relift": Method(
        "relift",
        rollouts=True,
        offline=False,
        strategy="sft_buffer",
        source="ReLIFT, arXiv 2506.07527: GRPO, with one SFT step (NLL - 0.001·H) on the teacher traces of "
        "buffered prompts whose rollouts all failed",
    ),
    "bread": Method(
        "bread",
        rollouts=True,
        offline=False,
        strategy="teacher_prefix",
        source="BREAD, arXiv 2506.17211: GRPO; a group whose rollouts all fail is re-sampled after the shortest "
        "teacher prefix that lets one succeed; loss on the student's tokens only",
    ),
    "mixpolicy": Method(
        "mixpolicy",
        rollouts=True,
        offline=True,
        offline_ratio="one",
        source="mixed-policy GRPO with π_off = 1 (the teacher row's ratio is π), as the RED paper's MixPolicy baseline",
    ),
    "onpolicy_offline": Method(
        "onpolicy_offline",
        rollouts=True,
        offline=True,
        offline_ratio="on_policy",
        source="teacher row treated as on-policy, π_off = stopgrad(π): advantage-weighted log π",
    ),
    "luffy": Method(
        "luffy",
        rollouts=True,
        offline=True,
        offline_ratio="luffy",
        source="LUFFY, arXiv 2504.14945: shaping f(π) = π/(π+γ), γ = loss.luffy_gamma, unclipped, mixed group advantage",
    ),
    "red_entropy": Method(
        "red_entropy",
        rollouts=True,
        offline=True,
        offline_ratio="one",
        regulator=True,
        source="RED ablation I, arXiv 2508.16677 Table 2: entropy regulator on, no policy shift (π_off = 1)",
    ),
    "red_shift": Method(
        "red_shift",
        rollouts=True,
        offline=True,
        offline_ratio="shift",
        regulator=False,
        source="RED ablation II, arXiv 2508.16677 Table 2: policy shift on, w = 1",
    ),
}

# Distillation from a teacher model's distributions (arXiv 2605.16826): the 2x2 grid of prefix source
# x KL direction, and the KL mixture. Which rows exist (teacher or rollouts) follows distill.prefix.
_GRID = "arXiv 2605.16826, the distillation grid: "


def with_prefix(method: Method, prefix: str) -> Method:
    """A distillation method measured on ``prefix``'s tokens: its rows are rollouts (``"student"``)
    or the teacher's traces (``"teacher"``)."""
    return replace(method, rollouts=prefix == "student", offline=prefix == "teacher", distill_prefix=prefix)


def _distill(name: str, prefix: str, alpha: float, what: str) -> Method:
    preset = Method(
        name,
        rollouts=False,
        offline=False,
        objective="distill",
        distill_alpha=alpha,
        auxiliaries=("teacher",),
        source=_GRID + what,
    )
    return with_prefix(preset, prefix)


METHODS |= {
    "kd": _distill("kd", "teacher", 1.0, "teacher prefix, forward KL (SFT-style distillation)"),
    "dagger": _distill("dagger", "student", 1.0, "student prefix, forward KL (DAgger-style on-policy SFT)"),
    "offline_rkl": _distill(
        "offline_rkl", "teacher", 0.0, "teacher prefix, reverse KL (offline-RL-style distillation)"
    ),
    "opd": _distill("opd", "student", 0.0, "student prefix, reverse KL (on-policy distillation)"),
    "kl_mix": _distill("kl_mix", "student", 0.8, "student prefix, 0.8 forward + 0.2 reverse KL (KL mixing)"),
}

# ... and each staged into GRPO, which starts from the distilled checkpoint (the paper's "distillation
# followed by RL": forward-KL starting points keep the entropy RL needs).
METHODS |= {
    f"{name}_grpo": Method(
        f"{name}_grpo",
        rollouts=True,
        offline=False,
        stages=(name, "grpo"),
        source=f"{_GRID}{name} for baselines.staged_sft_fraction of the steps, then GRPO from its checkpoint",
    )
    for name in ("kd", "dagger", "offline_rkl", "opd", "kl_mix")
}

# BARD (arXiv 2511.01470): a thinking budget in the prompt; phase 1 SFT on traces compressed to several
# budgets, phase 2 GRPO whose reward joins correctness and budget fidelity; staged as one method.
_BARD = "BARD, arXiv 2511.01470: "
_BUDGETED = {"records": "budgets", "conditioning": "budget"}
METHODS |= {
    "bard_sft": Method(
        "bard_sft",
        rollouts=False,
        offline=True,
        objective="sft",
        source=_BARD + "phase 1, SFT on (question, budget) -> the trace compressed to that budget",
        **_BUDGETED,
    ),
    "bard_rl": Method(
        "bard_rl",
        rollouts=True,
        offline=False,
        reward="budget",
        source=_BARD + "phase 2 alone (no budget SFT first), GRPO on R = R_acc * f(L, b)",
        **_BUDGETED,
    ),
    "bard_rl_additive": Method(
        "bard_rl_additive",
        rollouts=True,
        offline=False,
        reward="budget_additive",
        source=_BARD
        + "phase 2 with the additive reward R = R_acc + weight * f(L, b), the variant the paper argues against",
        **_BUDGETED,
    ),
    "bard": Method(
        "bard",
        rollouts=True,
        offline=True,
        stages=("bard_sft", "bard_rl"),
        source=_BARD + "budget SFT for baselines.staged_sft_fraction of the steps, then GRPO on R_acc * f(L, b)",
        **_BUDGETED,
    ),
    "bard_additive": Method(
        "bard_additive",
        rollouts=True,
        offline=True,
        stages=("bard_sft", "bard_rl_additive"),
        source=_BARD + "budget SFT, then GRPO on the additive reward R_acc + weight * f(L, b)",
        **_BUDGETED,
    ),
}

# RAVR (arXiv 2510.25206): rollouts sampled with the reference answer in the prompt, rewarded by the
# utility of their path over a question-only baseline, and taught to the question-only prompt.
METHODS["ravr"] = Method(
    "ravr",
    rollouts=True,
    offline=False,
    objective="ravr",
    strategy="answer_posterior",
    conditioning="answer",
    source="RAVR, arXiv 2510.25206: answer-conditioned posterior rollouts, reward s(z) - b(x) with "
    "s(z) = π(y* | x, z), the paths taught to the question-only prompt weighted by utility (inferred parts: docs)",
)

# Critics (arXiv 2510.01656): token advantages from GAE on learned values, the clipped objective with an
# entropy bonus; classic PPO has one critic, AsyPPO several small ones whose disagreement masks the terms.
_CRITIC = {"objective": "ppo", "advantage": "group", "auxiliaries": ("critics",)}
METHODS |= {
    "ppo": Method(
        "ppo",
        rollouts=True,
        offline=False,
        critics=1,
        source="PPO, arXiv 1707.06347: one critic (a value model beside the policy), GAE token advantages, "
        "clipped surrogate with an entropy bonus (AsyPPO's baseline)",
        **_CRITIC,
    ),
    "asyppo": Method(
        "asyppo",
        rollouts=True,
        offline=False,
        critics=2,
        value_masks=(0.2, 0.2),
        source="AsyPPO, arXiv 2510.01656: mini-critics on disjoint shares of each group, GAE on their mean value; "
        "advantages masked where they agree most (k = 20 %), the entropy bonus where they disagree most (h = 20 %)",
        **_CRITIC,
    ),
    "asyppo_no_masks": Method(
        "asyppo_no_masks",
        rollouts=True,
        offline=False,
        critics=2,
        source="AsyPPO's ablation: the same mini-critics and GAE on their mean value, no masks (k = h = 0)",
        **_CRITIC,
    ),
}

#: The paper's Table 2 rows in its order: what ``redrl compare --methods all`` runs.
COMPARED: tuple[str, ...] = (
    "sft",
    "grpo",
    "sft_grpo",
    "mixpolicy",
    "onpolicy_offline",
    "luffy",
    "srft",
    "relift",
    "bread",
    "red_entropy",
    "red_shift",
    "red",
)
