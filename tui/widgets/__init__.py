"""The app's widgets: answers with selectable tokens, the prompt, status bar, side panels."""

from .attribution import AttributionPanel
from .output import OutputView, TurnView
from .prompt import PromptArea
from .sampling import SamplingForm
from .status import StatusBar
from .steering import ConceptRow, SteeringPanel

__all__ = ["AttributionPanel", "OutputView", "TurnView", "PromptArea", "SamplingForm", "StatusBar",
           "ConceptRow", "SteeringPanel"]
