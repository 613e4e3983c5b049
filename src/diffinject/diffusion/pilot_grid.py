"""The candidates the injection pilot tries (`injection.pilot_grid`), kept apart from the pilot itself
(diffusion/pilot.py) so that the params schema can check them without importing the sampler."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

LABEL_RULES = ("content", "style")

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


@dataclass(frozen=True)
class Candidate:
    """One injection setting the pilot tries; the keys are `injection.*`'s."""

    operator: str
    sites: tuple[str, ...]
    t_max: int | None
    h_gamma: float
    label_from: str  # content | style

    @property
    def name(self) -> str:
        window = "all t" if self.t_max is None else f"t<={self.t_max}"
        return f"{self.operator} {'+'.join(self.sites)} {window} g{self.h_gamma:g} label:{self.label_from}"

    def as_params(self) -> dict:
        """The `injection.*` keys this candidate sets (t_edit 0: the window is [0, t_max])."""
        return {"operator": self.operator, "site": list(self.sites), "t_edit": 0, "t_max": self.t_max,
                "h_gamma": self.h_gamma, "label_from": self.label_from}


def parse_candidate(text: str) -> list[Candidate]:
    """"operator=channel_stats,site=up0+up1,t_max=300,h_gamma=1.0[,label_from=style]" -> its candidates
    (both label rules unless one is named). Raises ValueError naming the bad part."""
    values: dict[str, str] = {}
    for item in text.split(","):
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"{item!r} is not key=value")
        values[key.strip()] = value.strip()
    unknown = set(values) - {"operator", "site", "t_max", "h_gamma", "label_from"}
    if unknown or not {"operator", "site"} <= set(values):
        raise ValueError(f"{text!r}: expected operator=..,site=a+b[,t_max=..][,h_gamma=..][,label_from=..]")
    t_max = None if values.get("t_max", "null") in ("null", "none", "None") else int(values["t_max"])
    rules = (values["label_from"],) if "label_from" in values else LABEL_RULES
    if not set(rules) <= set(LABEL_RULES):
        raise ValueError(f"{text!r}: label_from must be content or style")
    sites = tuple(s for s in values["site"].split("+") if s)
    return [Candidate(values["operator"], sites, t_max, float(values.get("h_gamma", 1.0)), rule) for rule in rules]


def candidate_grid(texts: Sequence[str] | None) -> list[Candidate]:
    return [c for text in (texts or DEFAULT_GRID) for c in parse_candidate(text)]
