"""Training tasks and their order (LEADRE §4.2-4.3): explicit alignment (EX), implicit alignment (IM), main.

- EX: an ad's description -> its S-ID, once per ad (x templates). Teaches what each S-ID token means.
- IM: a user's history with ads written as titles -> the next ad's S-ID. Bridges text and S-IDs.
- main: the same history with ads as S-IDs -> the next ad's S-ID (what is served).

The curriculum is a list of stages, each a list of tasks whose examples are shuffled together:
`ex_im_main` = [[ex], [im], [main]] (default), `mixed` = [[ex, im, main]], `main_only` = [[main]].

Augmentations: `templates_per_example` variants per sample with different instruction templates,
profile fields reordered per variant, and positive-interaction reuse (every earlier positive ad of a
user is a target with its own prefix; off = only the latest training target per user).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Literal

from pydantic import BaseModel, Field

from adgen.core.catalogue import Dataset, SplitExample
from adgen.model.lm_training import Example, SequenceExample
from adgen.model.prompts import PROFILE_FIELDS, PromptBuilder, shuffled_profile_order

TaskName = Literal["ex", "im", "main"]
Curriculum = Literal["ex_im_main", "mixed", "main_only", "ex_main", "ex+main"]
CURRICULA: dict[str, list[list[TaskName]]] = {
    "ex_im_main": [["ex"], ["im"], ["main"]],
    "mixed": [["ex", "im", "main"]],
    "main_only": [["main"]],
    "ex_main": [["ex"], ["main"]],
    "ex+main": [["ex", "main"]],
}


class TaskOptions(BaseModel):
    """Task mix and augmentation switches."""

    curriculum: Curriculum = "ex_im_main"
    templates_per_example: int = Field(1, ge=1, description="Template variants per user sample (main, IM).")
    align_templates: int = Field(2, ge=1, description="Template variants per ad (EX).")
    reorder_profile: bool = True
    reuse_positives: bool = True
    seed: int = 0


def curriculum_stages(curriculum: str) -> list[list[TaskName]]:
    """The stages of a curriculum, in training order."""
    if curriculum not in CURRICULA:
        raise ValueError(f"unknown curriculum {curriculum!r}; choose one of {sorted(CURRICULA)}")
    return [list(stage) for stage in CURRICULA[curriculum]]


def select_targets(train: Sequence[SplitExample], reuse_positives: bool) -> list[SplitExample]:
    """All training targets (reuse) or only each user's latest one."""
    if reuse_positives:
        return list(train)
    latest: dict[str, SplitExample] = {}
    for example in train:
        latest[example.user_id] = example  # leave_one_out emits each user's examples in time order
    return list(latest.values())


def user_examples(
    builder: PromptBuilder,
    dataset: Dataset,
    targets: Sequence[SplitExample],
    task: Literal["im", "main"],
    options: TaskOptions,
) -> list[Example]:
    """(prompt_ids, response_ids) for the main or implicit-alignment task."""
    rng = random.Random(f"{options.seed}-{task}")
    out: list[Example] = []
    for n, example in enumerate(targets):
        profile = dataset.users[example.user_id].profile
        for v in range(options.templates_per_example):
            order = shuffled_profile_order(rng) if options.reorder_profile and v > 0 else list(PROFILE_FIELDS)
            prompt = builder.user_prompt(
                example.history,
                profile,
                ads_as="sid" if task == "main" else "text",
                template=(n + v) % 4 if options.templates_per_example > 1 else 0,
                profile_order=order,
            )
            out.append((prompt.ids, builder.response_ids(example.target)))
    return out


def alignment_examples(builder: PromptBuilder, item_ids: Sequence[str], options: TaskOptions) -> list[Example]:
    """(prompt_ids, response_ids) for explicit alignment: one per ad and template."""
    return [
        (builder.alignment_prompt(item_id, template=t).ids, builder.response_ids(item_id))
        for item_id in item_ids
        for t in range(options.align_templates)
    ]


def sequence_examples(
    builder: PromptBuilder, dataset: Dataset, histories: Sequence[SplitExample]
) -> list[SequenceExample]:
    """One labelled sequence per user (layouts `sequence`, `sid_only`): every ad in `history` is a target.

    Pass each user's behaviour before their validation target (`Split.valid`): the training part, nothing later.
    A sequence whose ad targets were all cut by the prompt budget (oldest-first truncation keeps the newest
    behaviour, which may be content only) teaches nothing and is left out; when that leaves fewer than half of
    the users, `SequenceBudgetError` says so instead of training on alignment alone.
    """
    out: list[SequenceExample] = []
    for example in histories:
        seq = builder.sequence(example.history, dataset.users[example.user_id].profile)
        if any(label >= 0 for label in seq.labels):
            out.append(SequenceExample(seq.ids, seq.labels))
    if len(out) < len(histories) / 2:
        raise SequenceBudgetError(
            f"only {len(out)} of {len(histories)} users' sequences keep an ad target within "
            f"max_prompt_tokens={builder.options.max_prompt_tokens} (newer behaviour fills the budget and the clicks "
            "are cut): raise prompts.max_prompt_tokens, or write less per behaviour (prompts.ad_text, "
            "prompts.title_words)"
        )
    return out


class SequenceBudgetError(ValueError):
    """Too few users' sequences keep an ad target within the prompt budget to train on."""


def stage_examples(
    stage: Sequence[TaskName],
    builder: PromptBuilder,
    dataset: Dataset,
    train: Sequence[SplitExample],
    item_ids: Sequence[str],
    options: TaskOptions,
    histories: Sequence[SplitExample] = (),
) -> list[Example]:
    """Every example of one curriculum stage (the training loop shuffles them).

    With a `sequence`/`sid_only` prompt layout the main task is one labelled sequence per user in `histories`
    instead of one prompt per target in `train`; implicit alignment has no sequence form.
    """
    per_target = builder.options.layout == "per_target"
    targets = select_targets(train, options.reuse_positives) if per_target else []
    out: list[Example] = []
    for task in stage:
        if task == "ex":
            out += alignment_examples(builder, item_ids, options)
        elif per_target:
            out += user_examples(builder, dataset, targets, task, options)
        elif task == "main":
            out += sequence_examples(builder, dataset, histories)
        else:
            raise ValueError(
                f"task {task!r} has no form for the {builder.options.layout!r} layout (its sequences already pair "
                "each ad's S-ID with its words); use the curricula ex_main, ex+main or main_only"
            )
    return out
