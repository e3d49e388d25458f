"""What every tab's handlers share in one running app: its limits, its guard and its bounded caches.

One instance per app (made by ``build_app``), handed to each tab: no module globals, so two apps in
one process (tests, a Space and a local run) never share or leak state. Every handler runs under
the context's guard (``ui.wiring``), so the engine's loaders and passes see the app's policy and
budgets.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from engine.experiments import EvaluationCache
from engine.guard import Guard
from engine.models import LoadedModel, ModelCache
from ui.estimates import StepTimes
from ui.limits import Limits
from ui.state import Session


@dataclass(frozen=True)
class AppContext:
    limits: Limits = field(default_factory=Limits)
    models: ModelCache = field(default_factory=ModelCache)
    evaluations: EvaluationCache = field(default_factory=EvaluationCache)
    default_model: str | None = None  # preselected in Model & Data (None: the builtin Gemma when installed)
    times: StepTimes = field(default_factory=StepTimes)  # what steps took here: the estimates' correction
    guard: Guard | None = None  # made from the limits unless given

    def __post_init__(self) -> None:
        if self.guard is None:
            object.__setattr__(self, "guard", self.limits.guard())

    def model(self, session: Session) -> LoadedModel:
        """The session's model (loaded in Model & Data; cached, so this is instant)."""
        session.require_model()
        return self.models.get(session.model_spec)
