"""Users of the synthetic world: profile, ARPU, latent drifting interests, and the behaviour they drive.

Each user is simulated from its own seeded RNG, independently of every other user, so a world of any
size streams to disk in constant memory and any single user can be regenerated for debugging.

The signal a model can learn: a user's latent mixture of 2-4 second-level categories (chosen with
profile-dependent tendencies) drives both content behaviour (play, complete, search) and ad behaviour
(click, conversion); the mixture drifts over the window (one interest fades, a new one grows), so recent
behaviour predicts the next ad better than old behaviour, and both beat global popularity. Brand
preference per interest and the consumption level's brand tier make the choice within a category
learnable too.
"""

from __future__ import annotations

import functools
import random
import time
from dataclasses import dataclass, field

from adgen.core.catalogue import UserProfile
from adgen.world.ads import TIER_AFFINITY, Ad, AdSampler
from adgen.world.content import ContentSampler
from adgen.world.queries import LabelledQuery, render_query
from adgen.world.taxonomy import SUB_CATEGORIES, SUBS_BY_TOP, TOP_CATEGORIES

CONSUMPTION_LEVELS = ("low", "medium", "high")
_RESIDENCES = (  # (place, wealth tier 0..2, weight)
    ("Metro North", 2, 3.0),
    ("Harbor City", 2, 2.5),
    ("Lakeside", 1, 2.0),
    ("Riverton", 1, 2.0),
    ("Westfield", 1, 1.5),
    ("Pine Valley", 0, 1.5),
    ("Dry Creek", 0, 1.0),
    ("Oak Hollow", 0, 1.0),
)
_EDUCATION = ("high school", "associate degree", "bachelor's degree", "master's degree", "doctorate")
_OCCUPATIONS_BY_AGE = (
    ("student", "retail worker", "software engineer", "designer", "barista", "office worker"),
    ("office worker", "engineer", "teacher", "nurse", "manager", "self-employed", "driver", "homemaker"),
    ("manager", "teacher", "self-employed", "retired", "doctor", "homemaker", "consultant"),
)
# First-level category affinity by age band (<30, 30-49, 50+) and by sex (female, male).
_AFFINITY: dict[str, tuple[tuple[float, float, float], tuple[float, float]]] = {
    "Electronics": ((1.5, 1.1, 0.7), (0.8, 1.3)),
    "Computers": ((1.3, 1.1, 0.8), (0.7, 1.4)),
    "Home & Kitchen": ((0.7, 1.3, 1.3), (1.3, 0.8)),
    "Fashion": ((1.6, 1.0, 0.6), (1.5, 0.7)),
    "Beauty": ((1.5, 1.0, 0.7), (2.0, 0.4)),
    "Sports & Outdoors": ((1.3, 1.1, 0.7), (0.8, 1.3)),
    "Toys & Games": ((0.5, 1.6, 1.0), (1.1, 0.9)),
    "Baby": ((0.6, 1.9, 0.4), (1.4, 0.7)),
    "Grocery": ((0.9, 1.1, 1.1), (1.1, 0.9)),
    "Health": ((0.5, 1.0, 1.9), (1.1, 0.9)),
    "Automotive": ((0.8, 1.2, 1.0), (0.5, 1.6)),
    "Books": ((0.8, 0.9, 1.4), (1.2, 0.8)),
    "Pet Supplies": ((1.0, 1.1, 1.0), (1.2, 0.8)),
    "Garden & Outdoor": ((0.4, 1.0, 1.9), (1.0, 1.0)),
    "Tools & Home Improvement": ((0.5, 1.2, 1.4), (0.5, 1.6)),
    "Travel": ((1.1, 1.0, 1.1), (1.0, 1.0)),
    "Finance": ((0.9, 1.2, 1.1), (0.9, 1.1)),
    "Education": ((1.8, 0.9, 0.5), (1.0, 1.0)),
    "Games & Apps": ((2.0, 0.9, 0.4), (0.7, 1.3)),
    "Real Estate & Services": ((0.8, 1.2, 1.1), (1.0, 1.0)),
}
_LEVEL_ARPU_MEDIAN = (6.0, 18.0, 55.0)  # heavy tailed around these (log-normal, sigma 0.9)
_LEVEL_CONVERSION = (0.07, 0.11, 0.17)
EXPLORE_RATE = 0.08  # share of sessions about a random category (noise the model cannot predict)


@dataclass(frozen=True, slots=True)
class WorldClock:
    start: int
    end: int

    def iso(self, ts: int) -> str:
        """UTC ISO-8601 with second precision and a `Z` (fixed width, so text order is time order)."""
        day, second = divmod(ts, 86_400)
        return _day_prefix(day) + _TIME_OF_DAY[second]


# "THH:MM:SSZ" for every second of a day: the hot path formats ~50 timestamps per user.
_TIME_OF_DAY: tuple[str, ...] = tuple(f"T{s // 3600:02d}:{s // 60 % 60:02d}:{s % 60:02d}Z" for s in range(86_400))


@functools.lru_cache(maxsize=4096)
def _day_prefix(day: int) -> str:
    return time.strftime("%Y-%m-%d", time.gmtime(day * 86_400))


def user_id(index: int) -> str:
    return f"u{index:08d}"


def make_profile(rng: random.Random) -> tuple[UserProfile, int, int]:
    """A profile plus (age band, consumption level index), the two drivers of tendencies."""
    age = max(18, min(75, round(rng.gauss(38, 13))))
    band = 0 if age < 30 else 1 if age < 50 else 2
    sex = rng.choices(("female", "male", "unspecified"), weights=(49, 49, 2))[0]
    place, wealth, _ = rng.choices(_RESIDENCES, weights=[r[2] for r in _RESIDENCES])[0]
    education_rank = min(4, max(0, round(rng.gauss(1.6 + 0.5 * wealth - (0.6 if age < 22 else 0), 1.0))))
    occupation = rng.choice(_OCCUPATIONS_BY_AGE[band]) if age < 66 else "retired"
    score = 0.8 * wealth + 0.45 * education_rank + (0.4 if band == 1 else 0.0) + rng.gauss(0, 0.8)
    level = 0 if score < 1.4 else 1 if score < 2.6 else 2
    arpu = round(_LEVEL_ARPU_MEDIAN[level] * rng.lognormvariate(0.0, 0.9), 2)
    profile = UserProfile(
        age=age,
        sex=sex,
        residence=place,
        education=_EDUCATION[education_rank],
        occupation=occupation,
        consumption_level=CONSUMPTION_LEVELS[level],
        arpu=arpu,
    )
    return profile, band, level


def _top_prior(band: int, sex: str) -> list[float]:
    sex_col = {"female": 0, "male": 1}.get(sex)
    weights = []
    for top in TOP_CATEGORIES:
        by_age, by_sex = _AFFINITY[top.name]
        weights.append(top.popularity * by_age[band] * (by_sex[sex_col] if sex_col is not None else 1.0))
    return weights


def _draw_sub(rng: random.Random, prior: list[float], exclude: set[int]) -> int:
    for _ in range(20):
        top = rng.choices(range(len(TOP_CATEGORIES)), weights=prior)[0]
        sub = rng.choice(SUBS_BY_TOP[top])
        if sub not in exclude:
            return sub
    return next(s.index for s in SUB_CATEGORIES if s.index not in exclude)


def make_interests(rng: random.Random, prior: list[float]) -> tuple[dict[int, float], dict[int, float]]:
    """Start and end mixtures over second-level categories (weights sum to 1); the end mixture may swap
    one interest for a new one, and weights shift, which is the drift over the window."""
    k = rng.choices((2, 3, 4), weights=(3, 4, 2))[0]
    subs: list[int] = []
    for _ in range(k):
        subs.append(_draw_sub(rng, prior, set(subs)))
    start = _normalise({s: rng.gammavariate(1.2, 1.0) + 0.15 for s in subs})
    end = {s: w * rng.lognormvariate(0.0, 0.5) for s, w in start.items()}
    if rng.random() < 0.6:
        faded = rng.choice(subs)
        end[faded] *= 0.1
        end[_draw_sub(rng, prior, set(subs))] = rng.uniform(0.3, 0.8)
    return start, _normalise(end)


def _normalise(weights: dict[int, float]) -> dict[int, float]:
    total = sum(weights.values())
    return {s: round(w / total, 4) for s, w in weights.items()}


def _mixture_at(start: dict[int, float], end: dict[int, float], frac: float) -> tuple[list[int], list[float]]:
    subs = sorted(set(start) | set(end))
    return subs, [(1 - frac) * start.get(s, 0.0) + frac * end.get(s, 0.0) for s in subs]


@dataclass(slots=True)
class SimulatedUser:
    """One user's rows: users.jsonl, truth/interests.jsonl, and (ts, event) pairs for the event files."""

    user: dict[str, object]
    truth: dict[str, object]
    behavior: list[tuple[int, dict[str, object]]]
    searches: list[tuple[int, dict[str, object]]]


@dataclass(slots=True)
class _UserState:
    """What a user's sessions share: tendencies, interests and the ads clicked so far."""

    prior: list[float]
    start_mix: dict[int, float]
    end_mix: dict[int, float]
    brands: dict[int, str | None]
    level: int
    click_rate: float
    clicked: dict[int, list[Ad]] = field(default_factory=dict)


@dataclass(slots=True)
class UserSimulator:
    """Everything shared by all users (read-only); `simulate(i)` depends only on (seed, i)."""

    seed: int
    clock: WorldClock
    ads: AdSampler
    content: ContentSampler
    queries_by_sub: dict[int, list[LabelledQuery]]
    min_events: int = 20
    max_events: int = 80

    def simulate(self, index: int) -> SimulatedUser:
        rng = random.Random(f"{self.seed}:user:{index}")
        uid = user_id(index)
        profile, band, level = make_profile(rng)
        prior = _top_prior(band, profile.sex or "")
        start_mix, end_mix = make_interests(rng, prior)
        brands = {s: self._preferred_brand(rng, s, level) for s in sorted(set(start_mix) | set(end_mix))}
        user = _UserState(prior, start_mix, end_mix, brands, level, click_rate=(0.75, 0.65, 0.55)[band])
        target = rng.randint(self.min_events, self.max_events)
        span = self.clock.end - self.clock.start - 7200
        times = sorted(self.clock.start + 3600 + rng.randrange(span) for _ in range(max(3, round(target / 4.2))))
        sessions = [self._session(rng, t, user) for t in times]
        # Keep the count within [min_events, max_events]: drop or add whole sessions at random times, so
        # the activity stays spread over the window.
        total = 1 + sum(len(behavior) for behavior, _ in sessions)  # 1: the profile update
        while total > self.max_events and len(sessions) > 1:
            behavior, _ = sessions.pop(rng.randrange(len(sessions)))
            total -= len(behavior)
        while total < self.min_events:
            extra = self._session(rng, self.clock.start + 3600 + rng.randrange(span), user)
            sessions.append(extra)
            total += len(extra[0])
        sessions.sort(key=lambda session: session[0][0][0])

        profile_fields = profile.model_dump()
        first_time = sessions[0][0][0][0]
        behavior = [(first_time - 60, {"type": "profile_update", **profile_fields})]
        searches: list[tuple[int, dict[str, object]]] = []
        for session_behavior, session_searches in sessions:
            behavior += session_behavior
            searches += session_searches

        last = self.clock.end - 1  # sessions near the end may run past it; clamping keeps the order
        behavior.sort(key=lambda pair: pair[0])
        events = [self._event(f"{uid}-{seq:04d}", min(ts, last), uid, f) for seq, (ts, f) in enumerate(behavior)]
        searches.sort(key=lambda pair: pair[0])
        search_events = [
            self._event(f"{uid}-s{seq:03d}", min(ts, last), uid, {"type": "search_query", **f})
            for seq, (ts, f) in enumerate(searches)
        ]
        truth = {
            "user_id": uid,
            "interests_start": _truth_mixture(start_mix),
            "interests_end": _truth_mixture(end_mix),
            "preferred_brands": {">".join(SUB_CATEGORIES[s].path): b for s, b in brands.items() if b},
            "consumption_level": profile.consumption_level,
        }
        return SimulatedUser({"user_id": uid, "profile": profile_fields}, truth, events, search_events)

    def _session(
        self, rng: random.Random, t: int, user: _UserState
    ) -> tuple[list[tuple[int, dict[str, object]]], list[tuple[int, dict[str, object]]]]:
        """One visit at time t: an ad request, content about one interest, maybe a search, a click, a query."""
        behavior: list[tuple[int, dict[str, object]]] = []
        searches: list[tuple[int, dict[str, object]]] = []
        frac = (t - self.clock.start) / (self.clock.end - self.clock.start)
        subs, weights = _mixture_at(user.start_mix, user.end_mix, frac)
        explore = rng.random() < EXPLORE_RATE
        sub = _draw_sub(rng, user.prior, set()) if explore else rng.choices(subs, weights=weights)[0]
        behavior.append((t, {"type": "ad_request", "slot": rng.choice(("feed", "feed", "video", "search"))}))
        now = t
        complete_rate = 0.35 + 0.5 * weights[subs.index(sub)] if sub in subs else 0.3
        for _ in range(1 + min(3, int(rng.expovariate(1.0)))):
            item = self.content.pick(rng, sub)
            if item is None:
                break
            now += rng.randint(5, 120)
            fields = {"content_id": item.content_id, "title": item.title, "category": item.categories[0]}
            behavior.append((now, {"type": "content_play", **fields}))
            if rng.random() < complete_rate:
                now += rng.randint(60, 900)
                behavior.append((now, {"type": "content_complete", **fields}))
        if rng.random() < 0.25:
            now += rng.randint(10, 120)
            phrase = rng.choice(SUB_CATEGORIES[sub].product_types)
            behavior.append((now, {"type": "content_search", "query": render_query(rng, phrase)}))
        if rng.random() < user.click_rate:
            ad_sub = sub if rng.random() < 0.85 else rng.choices(subs, weights=weights)[0]
            now += rng.randint(5, 300)
            ad = self._pick_ad(rng, ad_sub, user.level, user.brands.get(ad_sub), user.clicked.get(ad_sub, []), now)
            if ad is not None:
                user.clicked.setdefault(ad_sub, []).append(ad)
                behavior.append((now, {"type": "ad_click", "ad_id": ad.ad_id}))
                if rng.random() < _LEVEL_CONVERSION[user.level] * (0.6 + 0.4 * TIER_AFFINITY[user.level][ad.tier]):
                    value = round(ad.bid * 25 * rng.lognormvariate(0.0, 0.6), 2)
                    conversion = {"type": "ad_conversion", "ad_id": ad.ad_id, "value": value}
                    behavior.append((now + rng.randint(60, 3600), conversion))
        queries = self.queries_by_sub.get(sub)
        if queries and rng.random() < 0.2:
            # head queries: rank r chosen with weight 1/(r+1)
            query = rng.choices(queries, cum_weights=_harmonic_cumsum(len(queries)))[0]
            searches.append((now + rng.randint(1, 60), {"query_id": query.query_id, "text": query.text}))
        return behavior, searches

    def _event(self, event_id: str, ts: int, uid: str, fields: dict[str, object]) -> tuple[int, dict[str, object]]:
        event: dict[str, object] = {
            "schema_version": 1,
            "event_id": event_id,
            "event_time": self.clock.iso(ts),
            "user_id": uid,
        }
        event.update(fields)
        return ts, event

    def _preferred_brand(self, rng: random.Random, sub: int, level: int) -> str | None:
        brands = TOP_CATEGORIES[SUB_CATEGORIES[sub].top_index].brands
        return rng.choices(brands, weights=[TIER_AFFINITY[level][tier] for _, tier in brands])[0][0]

    def _pick_ad(
        self, rng: random.Random, sub: int, level: int, brand: str | None, previous: list[Ad], ts: int
    ) -> Ad | None:
        roll = rng.random()
        if previous and roll < 0.05:
            ad = rng.choice(previous)
            if ad.is_live(ts):
                return ad
        if brand and roll < 0.45:
            ad = self.ads.pick_brand(rng, sub, brand, ts)
            if ad is not None:
                return ad
        return self.ads.pick(rng, sub, level, ts)


def _truth_mixture(mix: dict[int, float]) -> list[dict[str, object]]:
    return [
        {"category": list(SUB_CATEGORIES[s].path), "weight": w}
        for s, w in sorted(mix.items(), key=lambda kv: (-kv[1], kv[0]))
    ]


_HARMONIC: dict[int, list[float]] = {}


def _harmonic_cumsum(n: int) -> list[float]:
    if n not in _HARMONIC:
        total, out = 0.0, []
        for r in range(n):
            total += 1.0 / (r + 1)
            out.append(total)
        _HARMONIC[n] = out
    return _HARMONIC[n]
