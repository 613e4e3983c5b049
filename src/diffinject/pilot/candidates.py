"""The pilot's candidates: one injection setting each (`Candidate`), their text form in
`injection.pilot_grid` and its parser, the built-in grid, the guidance round's scales, and the names
the pilot's report and the search give a setting."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from diffinject.diffusion.injection_params import LABEL_RULES, PILOT_KEYS
from diffinject.diffusion.operators import OPERATORS
from diffinject.errors import DiffinjectError

# The built-in grid: the operators and sites docs/injection_operators.md found worth measuring, each
# under both label rules. Colour-like biases live in the channel statistics of the coarse skips,
# texture-like ones may need the 28x28 skips (up2) or the mid block; slerp of h is DiffInject's own.
DEFAULT_GRID = (
    "operator=channel_stats,site=up0+up1,t_max=300,h_gamma=1.0",
    "operator=channel_stats,site=up0+up1,t_max=500,h_gamma=1.0",
    "operator=channel_stats,site=up0+up1,t_max=null,h_gamma=1.0",
    "operator=channel_stats,site=up0+up1,t_max=300,h_gamma=0.5",
    "operator=channel_stats,site=up1+up2,t_max=300,h_gamma=1.0",
    "operator=channel_stats,site=up0+up1+up2,t_max=500,h_gamma=1.0",
    "operator=channel_stats,site=h+up0+up1,t_max=300,h_gamma=1.0",
    "operator=channel_mean,site=up0+up1,t_max=300,h_gamma=1.0",
    "operator=slerp,site=h,t_max=null,h_gamma=0.7",
)

# The (guidance_scale, window_guidance_scale) pairs the pilot's guidance round tries on a class-conditional
# DDPM, around each label rule's best setting of the first round (run at 1 everywhere): 0 is the null class, 1 the plain label, 3
# classifier-free guidance; a window scale of 0 drops the label where the content's features are
# injected, so that the label's own bias (a class embedding learnt on biased data carries the class's
# usual colour) does not pull the injected bias back (docs/label_in_generator.md).
GUIDANCE_GRID = ((0.0, None), (1.0, None), (3.0, None), (1.0, 0.0), (3.0, 0.0))


@dataclass(frozen=True)
class Candidate:
    """One injection setting the pilot tries; the keys are `injection.*`'s."""

    operator: str
    sites: tuple[str, ...]
    t_max: int | None
    h_gamma: float
    label_from: str  # content | style
    guidance_scale: float | None = None  # a class-conditional DDPM's; None: an unconditional one
    window_guidance_scale: float | None = None  # on the injected steps; None: guidance_scale's

    @property
    def name(self) -> str:
        guided = "" if self.guidance_scale is None else f" cfg{self.guidance_scale:g}"
        if self.window_guidance_scale is not None:
            guided += f"/{self.window_guidance_scale:g} in window"
        return f"{self.operator} {'+'.join(self.sites)} {window_name(self.t_max)} g{self.h_gamma:g} label:{self.label_from}{guided}"

    def as_params(self) -> dict:
        """The `injection.*` keys this candidate sets (PILOT_KEYS; the window starts at `injection.t_edit`)."""
        return {"operator": self.operator, "site": list(self.sites), "t_max": self.t_max,
                "h_gamma": self.h_gamma, "label_from": self.label_from, "guidance_scale": self.guidance_scale,
                "window_guidance_scale": self.window_guidance_scale}


def parse_candidate(text: str) -> list[Candidate]:
    """"operator=channel_stats,site=up0+up1,t_max=300,h_gamma=1.0[,label_from=style]" -> its candidates
    (both label rules unless one is named). Raises ValueError naming the bad part."""
    values: dict[str, str] = {}
    for item in text.split(","):
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"{item!r} is not key=value")
        values[key.strip()] = value.strip()
    unknown = set(values) - set(PILOT_KEYS)
    if unknown or not {"operator", "site"} <= set(values):
        raise ValueError(f"{text!r}: expected operator=..,site=a+b[,t_max=..][,h_gamma=..][,label_from=..]"
                         "[,guidance_scale=..][,window_guidance_scale=..]")
    t_max = None if values.get("t_max", "null") in ("null", "none", "None") else int(values["t_max"])
    rules = (values["label_from"],) if "label_from" in values else LABEL_RULES
    if not set(rules) <= set(LABEL_RULES):
        raise ValueError(f"{text!r}: label_from must be content or style")
    sites = tuple(s for s in values["site"].split("+") if s)
    guidance, window = (float(values[key]) if key in values else None for key in ("guidance_scale", "window_guidance_scale"))
    if values["operator"] not in OPERATORS:
        raise ValueError(f"operator {values['operator']!r} is not one of {', '.join(OPERATORS)}")
    return [Candidate(values["operator"], sites, t_max, float(values.get("h_gamma", 1.0)), rule, guidance, window)
            for rule in rules]


def candidate_grid(texts: Sequence[str] | None) -> list[Candidate]:
    """`injection.pilot_grid`'s candidates (null: DEFAULT_GRID); a malformed entry is a one-line error."""
    try:
        return [c for text in (texts or DEFAULT_GRID) for c in parse_candidate(text)]
    except ValueError as exc:
        raise DiffinjectError(f"params 'injection.pilot_grid': {exc}") from exc


def window_name(t_max: int | None) -> str:
    return "all t" if t_max is None else f"t<={t_max}"


def setting_name(keys: dict) -> str:
    """A setting without its gamma (the search's categorical choice): operator, sites, window, label rule;
    `keys` as a candidate's `as_params()` or a row of the pilot's report names them."""
    return f"{keys['operator']} {'+'.join(keys['site'])} {window_name(keys['t_max'])} label:{keys['label_from']}"


def restrict(candidates: Sequence[Candidate], fixed: dict) -> list[Candidate]:
    """The pilot's grid with the keys the params set (`InjectionParams.fixed`) taking their set values,
    duplicates dropped in order: the pilot chooses only what was left to it. A grid that never names the
    set value still yields candidates (each with the value substituted), so a set h_gamma of 0.5 runs
    the grid's operators, sites and windows at 0.5."""
    out: list[Candidate] = []
    for candidate in candidates:
        keys = {"operator": candidate.operator, "sites": candidate.sites, "t_max": candidate.t_max,
                "h_gamma": candidate.h_gamma, "label_from": candidate.label_from,
                "guidance_scale": candidate.guidance_scale, "window_guidance_scale": candidate.window_guidance_scale}
        for key, value in fixed.items():
            keys["sites" if key == "site" else key] = tuple(value) if key == "site" else value
        restricted = Candidate(**keys)
        if restricted not in out:
            out.append(restricted)
    return out
