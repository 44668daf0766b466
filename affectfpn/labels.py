"""Label names and orders used throughout affectfpn (the Aff-Wild2 / ABAW2 conventions)."""

from typing import Final

#: The 7 basic expressions in Aff-Wild2 class-index order (0..6).
EXPRESSIONS: Final[tuple[str, ...]] = (
    "Neutral",
    "Anger",
    "Disgust",
    "Fear",
    "Happiness",
    "Sadness",
    "Surprise",
)

#: The 12 action units annotated in Aff-Wild2 (ABAW2), in the order of the annotation files.
ACTION_UNITS: Final[tuple[str, ...]] = (
    "AU1",
    "AU2",
    "AU4",
    "AU6",
    "AU7",
    "AU10",
    "AU12",
    "AU15",
    "AU23",
    "AU24",
    "AU25",
    "AU26",
)

#: Names of the two regression outputs, in order.
VA_NAMES: Final[tuple[str, str]] = ("valence", "arousal")

#: Task names a model can have.
TASKS: Final[tuple[str, ...]] = ("va", "expression", "au")
