"""Intent-aware prompts (LEADRE §4.2): instruction + soft-prompt token, profile, interest summary and one
merged chronological behaviour sequence, cut to a token budget by dropping the oldest behaviour first.

Why pieces are tokenised separately and concatenated: the budget is then exact (a piece's token count is
known without re-encoding the whole prompt), and dropping a behaviour never changes the ids of the rest.
Training and serving use this one builder, so the small difference from encoding the joined text does
not matter.

Layout (each piece on its own line, behaviours oldest first, positive actions only):

    <soft_prompt> Predict the next ad this user will click.
    Profile: age 34, sex female, residence city
    Interests: Sports^5 times, Music^3 times
    Behaviour: 12 days ago^click^<a_1><b_2><c_3>; 3 days ago^watch^Funny cat videos
    Next ad:

The response is the next ad's S-ID tokens (no EOS: the trie ends the sequence).
"""

from __future__ import annotations

import random
import re
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, Field

from adgen.core.ad_text import meaningful_categories
from adgen.core.catalogue import AD_KINDS, POSITIVE_KINDS, ContentItem, HistoryEvent, Item, UserProfile
from adgen.index.semantic_ids import sid_tokens
from adgen.model.ad_tokens import AdTokens
from adgen.model.tokenizer import SOFT_PROMPT_TOKEN

DAY_SECONDS = 86_400.0
PROFILE_FIELDS: tuple[str, ...] = ("age", "sex", "residence", "education", "occupation", "consumption_level")
BEHAVIOUR_WORDS: dict[str, str] = {
    "ad_click": "click",
    "ad_conversion": "convert",
    "content_complete": "watch",
    "content_search": "search",
}
MAIN_TEMPLATES: tuple[str, ...] = (
    "{soft} Predict the next ad this user will click.",
    "{soft} Given the user's profile and recent behaviour, recommend the next ad.",
    "{soft} Which ad will this user engage with next?",
    "{soft} Based on these interests and actions, name the ad to show next.",
)
ALIGN_TEMPLATES: tuple[str, ...] = (
    "{soft} Give the semantic ID of this ad.",
    "{soft} Which ad ID matches this description?",
    "{soft} Map the ad below to its ID.",
)


class PromptError(ValueError):
    """A prompt cannot be built (unknown ad, budget too small for the fixed parts)."""


Layout = Literal["per_target", "sequence", "sid_only"]
AdText = Literal["none", "title", "category", "category_title"]


class PromptOptions(BaseModel):
    """Which components a prompt holds (ablations switch them off), its layout and its token budget.

    Layouts: `per_target` is one prompt per target with the interest summary and "N days ago" times (LEADRE §4.2,
    the paper's format). `sequence` writes the same behaviours as one growing sequence in which every ad's S-ID is
    a training target, so a user costs one forward pass instead of one per target (see `PromptBuilder.sequence`);
    `sid_only` is the TIGER-style control: the ads' S-IDs back to back, nothing else.
    """

    layout: Layout = "per_target"
    ad_text: AdText = Field(
        "title", description="sequence layout: the words written after each ad's S-ID (its title and/or category)."
    )
    show_time: bool = Field(
        True, description="sequence layout: '+Nd' days since the previous behaviour (off for data without real times)."
    )
    ad_id_tokens: bool = Field(
        False,
        description="sequence/sid_only layouts: each ad's own ad-ID token after its S-ID (input only; ad_tokens.py).",
    )
    include_profile: bool = True
    include_summary: bool = True
    include_content: bool = Field(True, description="Content-domain behaviours (watch/search) in the sequence.")
    summary_top: int = Field(6, ge=1, description="Most frequent categories listed in the interest summary.")
    max_prompt_tokens: int = Field(160, ge=16)
    max_events: int = Field(50, ge=1, description="Most recent positive behaviours considered.")
    window_days: float | None = Field(90.0, gt=0, description="Only behaviours this recent (None = all).")
    title_words: int = Field(8, ge=1, description="Titles are cut to this many words to save tokens.")


IGNORE = -100
"""Label of a token that is not a training target (the cross-entropy ignore index)."""


@dataclass(frozen=True)
class SequencePrompt:
    """A user's behaviour as one sequence: token ids and, per token, its label (an S-ID token id or IGNORE)."""

    ids: list[int]
    labels: list[int]
    text: str
    behaviours_kept: int


@dataclass(frozen=True)
class Prompt:
    """Token ids of a prompt, its text (for people and golden tests) and how many behaviours it kept."""

    ids: list[int]
    text: str
    behaviours_kept: int
    behaviours_total: int


#: Catalogue and user text is data, never tokens: a title like "output <a_3><b_1>" must not reach the model
#: as S-ID (or soft-prompt/special) tokens, so their angle brackets become look-alike quotes.
_TOKEN_LOOKALIKE = re.compile(r"<(/?[A-Za-z_]+\d*)>")


def as_data(text: str) -> str:
    return _TOKEN_LOOKALIKE.sub("\u2039\\1\u203a", text)


def _short(text: str, words: int) -> str:
    return " ".join(as_data(text).replace("^", " ").replace(";", ",").split()[:words])


class PromptBuilder:
    """Builds main-task, implicit-alignment and explicit-alignment prompts for one tokenizer and S-ID map.

    `sid_of(item_id)` gives the ad's S-ID (e.g. `SemanticIdMap.sid_of`).
    """

    def __init__(
        self,
        tokenizer: object,
        items: Mapping[str, Item],
        sid_of: Callable[[str], Sequence[int]],
        content: Mapping[str, ContentItem] | None = None,
        options: PromptOptions | None = None,
        ad_vocabulary: Sequence[str] | AdTokens = (),
    ) -> None:
        self.tokenizer = tokenizer
        self.items = items
        self.sid_of = sid_of
        self.content = content or {}
        self.options = options or PromptOptions()
        #: with `options.ad_id_tokens`, the ad-ID token of each ad of the checkpoint's vocabulary (model/ad_tokens.py)
        #: (a caller serving many batches passes the AdTokens it built once instead of the list)
        self.ad_tokens = (
            None
            if not self.options.ad_id_tokens
            else ad_vocabulary
            if isinstance(ad_vocabulary, AdTokens)
            else AdTokens(tokenizer, ad_vocabulary)
        )

    # -- pieces ---------------------------------------------------------------------------------------
    def _encode(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False).input_ids)  # type: ignore[operator]

    def sid_text(self, item_id: str) -> str:
        return "".join(sid_tokens(self.sid_of(item_id)))

    def response_ids(self, item_id: str) -> list[int]:
        """The target: the ad's S-ID tokens."""
        ids = self.tokenizer.convert_tokens_to_ids(sid_tokens(self.sid_of(item_id)))  # type: ignore[attr-defined]
        return list(ids)

    def category_of(self, event: HistoryEvent, deepest: bool = False) -> str:
        """First (or deepest) meaningful category (catalogue-wide roots such as Amazon's are skipped)."""
        item = self.items.get(event.ref) if event.kind in AD_KINDS else None
        if item is not None:
            cats = meaningful_categories(item)
            return (cats[-1] if deepest else cats[0]) if cats else ""
        if event.kind != "content_search" and event.ref in self.content:
            cats = self.content[event.ref].categories
            return cats[0] if cats else event.category
        return event.category

    def profile_text(self, profile: UserProfile, order: Sequence[str] = PROFILE_FIELDS) -> str:
        values = [(name, getattr(profile, name)) for name in order]
        parts = [f"{name.replace('_', ' ')} {as_data(str(value))}" for name, value in values if value not in (None, "")]
        return "Profile: " + ", ".join(parts) if parts else ""

    def summary_text(self, events: Sequence[HistoryEvent]) -> str:
        counts = Counter(as_data(c) for c in (self.category_of(e) for e in events) if c)
        if not counts:
            return ""
        top = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[: self.options.summary_top]
        return "Interests: " + ", ".join(f"{cat}^{n} times" for cat, n in top)

    def behaviour_text(self, event: HistoryEvent, now: float, ads_as: Literal["sid", "text"]) -> str:
        days = max(0, round((now - event.ts) / DAY_SECONDS))
        if event.kind in AD_KINDS:
            if ads_as == "sid":
                what = self.sid_text(event.ref)
            else:
                item = self.items.get(event.ref)
                what = _short(item.title if item else event.title, self.options.title_words)
        elif event.kind == "content_search":
            what = _short(event.title or event.ref, self.options.title_words)
        else:
            content = self.content.get(event.ref)
            what = _short(content.title if content else event.title or event.ref, self.options.title_words)
        return f"{days} days ago^{BEHAVIOUR_WORDS[event.kind]}^{what}"

    def positive_events(self, history: Sequence[HistoryEvent], now: float) -> list[HistoryEvent]:
        """Positive actions within the window, oldest first, at most `max_events` (the most recent)."""
        opts = self.options
        kinds = POSITIVE_KINDS if opts.include_content else AD_KINDS
        horizon = None if opts.window_days is None else now - opts.window_days * DAY_SECONDS
        kept = [e for e in history if e.kind in kinds and (horizon is None or e.ts >= horizon)]
        return kept[-opts.max_events :]

    # -- prompts --------------------------------------------------------------------------------------
    def user_prompt(
        self,
        history: Sequence[HistoryEvent],
        profile: UserProfile | None = None,
        *,
        ads_as: Literal["sid", "text"] = "sid",
        template: int = 0,
        profile_order: Sequence[str] = PROFILE_FIELDS,
        now: float | None = None,
    ) -> Prompt:
        """Main task (`ads_as="sid"`) or implicit alignment (`ads_as="text"`: ad titles in place of S-IDs).

        `now` is the request time; by default the time of the latest behaviour.
        """
        opts = self.options
        now = now if now is not None else (history[-1].ts if history else 0.0)
        if opts.layout != "per_target" and ads_as == "sid":
            seq = self.sequence(history, profile, now=now, cue=True)
            return Prompt(seq.ids, seq.text, seq.behaviours_kept, len(self.positive_events(history, now)))
        events = self.positive_events(history, now)
        head = [MAIN_TEMPLATES[template % len(MAIN_TEMPLATES)].format(soft=SOFT_PROMPT_TOKEN)]
        if opts.include_profile and profile is not None:
            text = self.profile_text(profile, profile_order)
            if text:
                head.append("\n" + text)
        if opts.include_summary:
            text = self.summary_text(events)
            if text:
                head.append("\n" + text)
        head.append("\nBehaviour:")
        tail = "\nNext ad:"
        lines = [(" " if i == 0 else "; ") + self.behaviour_text(e, now, ads_as) for i, e in enumerate(events)]
        return self._fit(head, lines, tail, len(events))

    def sequence(
        self,
        history: Sequence[HistoryEvent],
        profile: UserProfile | None = None,
        *,
        now: float | None = None,
        cue: bool = False,
    ) -> SequencePrompt:
        """The behaviours as one sequence whose every ad S-ID is labelled (layouts `sequence` and `sid_only`).

            <soft_prompt> Predict the next ad this user will click.
            Profile: age 34, sex female
            Behaviour:
            watch^Funny cat videos
            +2d click^<a_1><b_2><c_3><d_0> Cat litter 20 lb
            +0d click^                       <- the cue, only when serving (`cue=True`): the model writes the S-ID

        Why it is leak-free to train every target at once: a causal LM predicting an ad's S-ID sees only the tokens
        before it, i.e. the profile and the earlier behaviours; times are gaps to the previous behaviour, never
        "days before the request"; and there is no interest summary, which would count later behaviours (the
        per-event categories give the model the same information causally). Training and serving share this code.
        Over budget, the oldest behaviours go first.
        """
        opts = self.options
        now = now if now is not None else (history[-1].ts if history else 0.0)
        events = [e for e in self.positive_events(history, now) if opts.layout != "sid_only" or e.kind in AD_KINDS]
        if opts.layout == "sid_only":
            head = [SOFT_PROMPT_TOKEN]
        else:
            head = [MAIN_TEMPLATES[0].format(soft=SOFT_PROMPT_TOKEN)]
            if opts.include_profile and profile is not None:
                text = self.profile_text(profile)
                if text:
                    head.append("\n" + text)
            head.append("\nBehaviour:")
        head_ids = [t for piece in head for t in self._encode(piece)]
        pieces = []  # (ids, labels, text) per behaviour
        previous = None
        for event in events:
            pieces.append(self._event_piece(event, previous))
            previous = event
        tail_ids: list[int] = []
        tail_text = ""
        if cue and opts.layout == "sequence":
            tail_text = self._event_prefix("ad_click", now, previous)
            tail_ids = self._encode(tail_text)
        room = opts.max_prompt_tokens - len(head_ids) - len(tail_ids)
        if room < 0:
            raise PromptError(
                f"instruction and profile take {-room + opts.max_prompt_tokens} tokens, over "
                f"max_prompt_tokens={opts.max_prompt_tokens}; raise the budget"
            )
        keep, used = len(pieces), sum(len(p[0]) for p in pieces)
        while keep and used > room:
            used -= len(pieces[len(pieces) - keep][0])
            keep -= 1
        kept = pieces[len(pieces) - keep :]
        ids = head_ids + [t for p in kept for t in p[0]] + tail_ids
        labels = [IGNORE] * len(head_ids) + [t for p in kept for t in p[1]] + [IGNORE] * len(tail_ids)
        text = "".join(head) + "".join(p[2] for p in kept) + tail_text
        return SequencePrompt(ids, labels, text, keep)

    def _event_prefix(self, kind: str, ts: float, previous: HistoryEvent | None) -> str:
        gap = ""
        if self.options.show_time and previous is not None:
            gap = f"+{max(0, round((ts - previous.ts) / DAY_SECONDS))}d "
        return f"\n{gap}{BEHAVIOUR_WORDS[kind]}^"

    def _event_piece(self, event: HistoryEvent, previous: HistoryEvent | None) -> tuple[list[int], list[int], str]:
        opts = self.options
        ad_id = [self.ad_tokens.id_of(event.ref)] if self.ad_tokens is not None else []
        ad_text = self.tokenizer.convert_ids_to_tokens(ad_id[0]) if ad_id else ""  # type: ignore[attr-defined]
        if opts.layout == "sid_only":
            sid = self.response_ids(event.ref)
            return sid + ad_id, sid + [IGNORE] * len(ad_id), self.sid_text(event.ref) + ad_text
        prefix = self._event_prefix(event.kind, event.ts, previous)
        if event.kind in AD_KINDS:
            sid = self.response_ids(event.ref)
            words = self.ad_words(event)
            after = " " + words if words else ""
            after_ids = self._encode(after) if after else []
            prefix_ids = self._encode(prefix)
            ids = prefix_ids + sid + ad_id + after_ids
            labels = [IGNORE] * len(prefix_ids) + sid + [IGNORE] * (len(ad_id) + len(after_ids))
            return ids, labels, prefix + self.sid_text(event.ref) + ad_text + after
        if event.kind == "content_search":
            what = _short(event.title or event.ref, opts.title_words)
        else:
            content = self.content.get(event.ref)
            what = _short(content.title if content else event.title or event.ref, opts.title_words)
        ids = self._encode(prefix + what)
        return ids, [IGNORE] * len(ids), prefix + what

    def ad_words(self, event: HistoryEvent) -> str:
        """The words after an ad's S-ID in the sequence layout: its category and/or its shortened title."""
        choice = self.options.ad_text
        if choice == "none":
            return ""
        item = self.items.get(event.ref)
        title = _short(item.title if item else event.title, self.options.title_words)
        category = as_data(self.category_of(event, deepest=True))
        if choice == "title":
            return title
        if choice == "category":
            return category
        return f"{category}: {title}" if category else title

    def alignment_prompt(self, item_id: str, template: int = 0) -> Prompt:
        """Explicit alignment: the ad's description -> its S-ID."""
        item = self.items.get(item_id)
        if item is None:
            raise PromptError(f"unknown ad {item_id!r}: it is not in the catalogue")
        cats = meaningful_categories(item)
        parts = [f"Ad: {_short(item.title, 16)}"]
        if item.brand:
            parts.append(f"Brand: {as_data(item.brand)}")
        if cats:
            parts.append("Category: " + " > ".join(as_data(c) for c in cats[:3]))
        if item.product_type:
            parts.append(f"Type: {as_data(item.product_type)}")
        if item.description:
            parts.append("Description: " + _short(item.description, 24))
        head = [ALIGN_TEMPLATES[template % len(ALIGN_TEMPLATES)].format(soft=SOFT_PROMPT_TOKEN)]
        head += ["\n" + p for p in parts]
        return self._fit(head, [], "\nID:", 0, cut_head=True)

    def _fit(self, head: list[str], lines: list[str], tail: str, total: int, cut_head: bool = False) -> Prompt:
        budget = self.options.max_prompt_tokens
        head_ids = [self._encode(p) for p in head]
        tail_ids = self._encode(tail)
        fixed = sum(map(len, head_ids)) + len(tail_ids)
        if fixed > budget:
            if not cut_head:
                raise PromptError(
                    f"instruction, profile and summary take {fixed} tokens, over max_prompt_tokens={budget}; "
                    "raise the budget or lower summary_top"
                )
            flat = [t for ids in head_ids for t in ids][: budget - len(tail_ids)]
            return Prompt(flat + tail_ids, self.tokenizer.decode(flat) + tail, 0, total)  # type: ignore[attr-defined]
        line_ids = [self._encode(line) for line in lines]
        room = budget - fixed
        keep = len(line_ids)
        used = sum(map(len, line_ids))
        while keep and used > room:  # drop the oldest behaviour first
            used -= len(line_ids[len(line_ids) - keep])
            keep -= 1
        kept_lines = lines[len(lines) - keep :]
        kept_ids = line_ids[len(line_ids) - keep :]
        if keep and keep < len(lines):  # the first kept line must not start with the separator
            kept_lines[0] = " " + kept_lines[0][2:]
            kept_ids[0] = self._encode(kept_lines[0])
        ids = [t for part in (*head_ids, *kept_ids, tail_ids) for t in part]
        return Prompt(ids, "".join(head) + "".join(kept_lines) + tail, keep, total)


def shuffled_profile_order(rng: random.Random) -> list[str]:
    """A random profile field order (augmentation: the model must not rely on field positions)."""
    order = list(PROFILE_FIELDS)
    rng.shuffle(order)
    return order


def fixed_texts() -> list[str]:
    """The builder's own words (instructions, headers, behaviour types) for the tokenizer's BPE corpus, so the
    fixed parts of every prompt cost few tokens."""
    words = " ".join(BEHAVIOUR_WORDS.values())
    headers = "\n".join(
        ["", "Profile:", "Interests:", "Behaviour: 3 days ago^", "Next ad:", "Ad:", "Brand:", "Category:"]
    )
    headers += "\n".join(["", "Type:", "Description:", "ID:", "age sex residence 12 times, 5 days ago; 0 days ago"])
    fields = " ".join(f.replace("_", " ") for f in PROFILE_FIELDS)
    return [t.format(soft="") for t in (*MAIN_TEMPLATES, *ALIGN_TEMPLATES)] + [words, headers, fields]
