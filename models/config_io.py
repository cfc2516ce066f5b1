"""Config dataclasses <-> JSON dicts, rejecting unknown fields with a clear message (one implementation)."""
from __future__ import annotations

import dataclasses
import json


def config_from_dict(cls, data: dict, what: str):
    """Build the dataclass ``cls`` from ``data``; unknown keys are a ValueError naming them and ``what``."""
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(f"{what}: unknown field(s) {unknown}; known fields are {sorted(known)}")
    return cls(**data)


def read_json_file(path: str):
    """The parsed JSON of an existing file; invalid JSON is a ValueError naming the file and the line."""
    with open(path) as handle:
        try:
            return json.load(handle)
        except json.JSONDecodeError as error:
            raise ValueError(f"{path}: invalid JSON ({error.msg} at line {error.lineno})") from None
