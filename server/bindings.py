"""Key bindings, gamepad mapping, dead zone and keyboard magnitudes: the one place they are defined.

The browser gets all of it from ``GET /api/config`` (``bindings_config()``) and holds no copy of its own.
Keys are ``KeyboardEvent.code`` values (layout independent). A client reports, per action, a flag (0/1) and a
magnitude in 0..1 (a fraction of the action's full-scale magnitude, see ``server.inputs``).
"""
from __future__ import annotations

from models.action_format import ACTION_NAMES

# KeyboardEvent.code -> action name.
KEYBOARD: dict[str, str] = {
    "KeyW": "Forward",
    "KeyS": "Back",
    "KeyA": "Left",
    "KeyD": "Right",
    "ArrowLeft": "Yaw Left",
    "ArrowRight": "Yaw Right",
    "ArrowUp": "Pitch Up",
    "ArrowDown": "Pitch Down",
}

# A held key reports this fraction of the action's full-scale magnitude (1.0 = the artifacts' high percentile).
KEYBOARD_MAGNITUDE: dict[str, float] = {name: 1.0 for name in ACTION_NAMES}

# Gamepad, standard mapping (axes 0/1 left stick, 2/3 right stick; up and left are negative).
# Each stick axis drives the action named for its negative or positive side with |deflection| as magnitude.
GAMEPAD_STICKS: list[dict] = [
    {"stick": "left", "x_axis": 0, "y_axis": 1,
     "x": {"negative": "Left", "positive": "Right"}, "y": {"negative": "Forward", "positive": "Back"}},
    {"stick": "right", "x_axis": 2, "y_axis": 3,
     "x": {"negative": "Yaw Left", "positive": "Yaw Right"}, "y": {"negative": "Pitch Up", "positive": "Pitch Down"}},
]

# Radial dead zone per stick: deflections below it read 0, the rest of the range is rescaled to 0..1.
GAMEPAD_DEAD_ZONE = 0.12

# How often the browser reports its input state (it also reports at once on every change).
INPUT_HZ = 25


def check_bindings() -> None:
    """Every binding names a real action, and every action is reachable from the keyboard and the gamepad."""
    bound_keys = set(KEYBOARD.values())
    bound_pad = {stick[axis][side] for stick in GAMEPAD_STICKS for axis in ("x", "y")
                 for side in ("negative", "positive")}
    for where, names in (("KEYBOARD", bound_keys), ("GAMEPAD_STICKS", bound_pad),
                         ("KEYBOARD_MAGNITUDE", set(KEYBOARD_MAGNITUDE))):
        unknown = names - set(ACTION_NAMES)
        if unknown:
            raise ValueError(f"{where}: unknown action(s) {sorted(unknown)}; expected names from {list(ACTION_NAMES)}")
        missing = set(ACTION_NAMES) - names
        if missing:
            raise ValueError(f"{where}: action(s) {sorted(missing)} have no binding")
    if not 0 <= GAMEPAD_DEAD_ZONE < 1:
        raise ValueError(f"GAMEPAD_DEAD_ZONE must be in [0, 1), got {GAMEPAD_DEAD_ZONE}")


def bindings_config() -> dict:
    """The JSON the browser uses: keys by code, the gamepad sticks, dead zone, keyboard magnitudes, report rate."""
    check_bindings()
    return {
        "keyboard": [{"code": code, "action": name, "index": ACTION_NAMES.index(name)}
                     for code, name in KEYBOARD.items()],
        "keyboard_magnitude": [KEYBOARD_MAGNITUDE[name] for name in ACTION_NAMES],
        "gamepad": {"sticks": GAMEPAD_STICKS, "dead_zone": GAMEPAD_DEAD_ZONE,
                    "action_index": {name: i for i, name in enumerate(ACTION_NAMES)}},
        "input_hz": INPUT_HZ,
    }
