"""The candidates the injection pilot tries: `injection.pilot_grid`, or the built-in grid below. A
candidate's text form and its parser are the params schema's (diffusion/injection_params.py), so an edit
of this grid re-runs only the stages that run the pilot."""

from __future__ import annotations

from typing import Sequence

from diffinject.diffusion.injection_params import Candidate, parse_candidate

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


def candidate_grid(texts: Sequence[str] | None) -> list[Candidate]:
    return [c for text in (texts or DEFAULT_GRID) for c in parse_candidate(text)]
