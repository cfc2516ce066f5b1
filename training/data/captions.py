"""Caption cleaning for action training: remove camera-motion phrases so the text cannot leak the action.

Sekai captions describe the camera's motion ("the camera slowly moves forward, then pans left"); trained on them,
the model could follow the words instead of the action channels. ``CAMERA_MOTION_RULES`` (applied in order) delete:
    camera_clause    "as/while the camera ..." up to the next punctuation
    subject_motion   a camera-like subject with a motion verb and its directions ("the drone is flying forward",
                     "the camera pans to the left", "the view rises")
    verb_direction   a motion verb with an explicit direction ("turns left", "moving forward")
    inherent_adverb  a verb that is itself a camera motion, with a manner adverb ("descends slowly")
    camera_shot      camera-move nouns ("a tracking shot", "with smooth panning motion")
    direction_movement  directional movement nouns ("forward movement", "a slow upward glide")
Then ``_tidy`` removes the debris (dangling "then"/"and", doubled punctuation, empty sentences).
Scene words ("a drone flies over a river") stay: flying over something names no direction.
"""
from __future__ import annotations

import re

_SUBJECT = r"(?:the\s+|a\s+|our\s+)?(?:camera|drone|view|viewer|viewpoint|perspective|shot|footage|video|we)"
_ADVERB = r"(?:\w+ly\s+)"
_DIRECTION = (r"(?:forwards?|backwards?|ahead|left(?:ward)?|right(?:ward)?|up(?:wards?)?|down(?:wards?)?|sideways"
              r"|around|clockwise|counter-?clockwise|in|out|higher|lower|closer|away"
              r"|to\s+the\s+(?:left|right)|(?:to|toward|towards)\s+the\s+(?:sky|ground))")
_INHERENT = (r"(?:pan(?:s|ning|ned)?|tilt(?:s|ing|ed)?|rotat(?:es|ing|ed|e)|turn(?:s|ing|ed)?|yaw(?:s|ing|ed)?"
             r"|pitch(?:es|ing|ed)?|zoom(?:s|ing|ed)?|orbit(?:s|ing|ed)?|circl(?:es|ing|ed|e)|ascend(?:s|ing|ed)?"
             r"|descend(?:s|ing|ed)?|climb(?:s|ing|ed)?|ris(?:es|ing|e)|rose|strafe(?:s|d)?|strafing"
             r"|dolly|dollies|dollying|bank(?:s|ing|ed)?|veer(?:s|ing|ed)?|swing(?:s|ing)?|swung|sweep(?:s|ing)?"
             r"|swept|spin(?:s|ning)?|spun|lower(?:s|ing|ed)|rais(?:es|ing|ed|e))")
_MOVE = (r"(?:mov(?:es|ing|ed|e)|fl(?:ies|ying|ew|y)|glid(?:es|ing|ed|e)|travel(?:s|ling|ing|led|ed)?"
         r"|advanc(?:es|ing|ed|e)|drift(?:s|ing|ed)?|track(?:s|ing|ed)?|push(?:es|ing|ed)?|pull(?:s|ing|ed)?"
         r"|back(?:s|ing|ed)?\s+up|proceed(?:s|ing|ed)?|head(?:s|ing|ed)?|go(?:es|ing)?|went|continu(?:es|ing|ed|e)"
         r"|shift(?:s|ing|ed)?|slid(?:es|ing|e))")
_AUX = r"(?:(?:is|are|was|then|also|now|begins\s+to|starts\s+to|continues\s+to|and)\s+)*"
_JOIN = r"(?:(?:,\s*)?(?:and\s+then|and|then)\s+)?"  # a removed phrase takes its connector along

CAMERA_MOTION_RULES: tuple[tuple[str, str], ...] = (
    ("camera_clause", rf"\b(?:as|while|when)\s+{_SUBJECT}\s+[^,.;]*"),
    ("subject_motion", rf"\b{_SUBJECT}\s+{_AUX}{_ADVERB}?(?:{_INHERENT}|{_MOVE}\s+{_ADVERB}?{_DIRECTION})"
                       rf"(?:\s+{_ADVERB}?{_DIRECTION})*(?:\s+\w+ly)?\b"),
    ("verb_direction", rf"{_JOIN}\b{_ADVERB}?(?:{_INHERENT}|{_MOVE})\s+{_ADVERB}?{_DIRECTION}(?:\s+{_DIRECTION})*"
                       rf"(?:\s+\w+ly)?\b"),
    ("inherent_adverb", rf"{_JOIN}\b{_INHERENT}\s+(?:slowly|gradually|steadily|smoothly|gently|quickly|rapidly)\b"),
    ("camera_shot", r"\b(?:(?:with|in|using)\s+)?(?:(?:a|an|the)\s+)?(?:(?:smooth|slow|steady|continuous"
                    r"|gentle|aerial|forward|backward|lateral|sideways|upward|downward|leftward|rightward|camera)\s+)*"
                    r"(?:pan(?:ning)?|tilt(?:ing)?|dolly|tracking|orbit(?:ing|al)?|zoom(?:ing)?|push-?in|pull-?out"
                    r"|fly-?through|crane|truck(?:ing)?)\s+(?:shot|movement|motion|move)\b"),
    ("direction_movement", r"\b(?:(?:with|in|using)\s+)?(?:(?:a|an|the)\s+)?(?:(?:smooth|slow|steady|continuous"
                           r"|gentle)\s+)?(?:forward|backward|lateral|sideways|upward|downward|leftward|rightward"
                           r"|rotational|turning)\s+(?:movement|motion|trajectory|progression|drift|glide)\b"),
)
_COMPILED = tuple((name, re.compile(pattern, re.IGNORECASE)) for name, pattern in CAMERA_MOTION_RULES)
_DANGLING = re.compile(r"(?:,\s*)?\b(?:and then|then|and|while|as|before|after|with)\s*(?=[,.;!?]|$)",
                       re.IGNORECASE)


def clean_caption(text: str) -> str:
    """``text`` without camera-motion phrases (see module docstring); scene content is kept."""
    for _, pattern in _COMPILED:
        text = pattern.sub(" ", text)
    return _tidy(text)


def _tidy(text: str) -> str:
    text = re.sub(r"\s+", " ", text)
    for _ in range(3):  # removals can expose new dangling words; three passes settle every case seen
        text = _DANGLING.sub("", text)
        text = re.sub(r"\s+([,.;!?])", r"\1", text)
        text = re.sub(r"([,;])\s*(?=[,.;!?])", "", text)  # ", ." -> "."
        text = re.sub(r"([.!?])\s*[,;]+", r"\1", text)  # ". ," -> "."
        text = re.sub(r"(^|[.!?])\s*[,;.]+", r"\1", text)  # empty sentences
    text = re.sub(r"\s+", " ", text).strip(" ,;")
    sentences = re.split(r"(?<=[.!?])\s+", text)
    return " ".join(s[:1].upper() + s[1:] for s in sentences if s.strip(" .,;!?")).strip()
