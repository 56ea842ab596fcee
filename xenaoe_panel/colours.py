"""Status values carry a colour (a Bootstrap contextual class) so every page shows them alike."""
from typing import ClassVar


class StateColourMixin:
    state: str
    STATE_COLOURS: ClassVar[dict[str, str]] = {}

    @property
    def state_colour(self) -> str:
        return self.STATE_COLOURS.get(self.state, "secondary")
