"""Which world the options name, and the checks of its names and paths, before anything loads.

No torch or diffsynth here (``tests/server/test_main.py`` checks): ``python -m server`` checks its options with this
module and answers ``--help`` or a wrong ``--world``, ``--model_dir`` or ``--artifacts`` in a fraction of a second,
before it imports the model libraries (seconds). Loading the world is ``server.generation.worlds``, which registers
its factories here.
"""
from __future__ import annotations

import os
from dataclasses import replace
from typing import Callable

from models.model_dir import CONFIG_NAME, check_model_dir
from server.settings import Settings

# name -> factory(settings, device, torch_dtype) -> server.generation.worlds.World
WORLD_FACTORIES: dict[str, Callable] = {}

# The toy world committed in the repository (``python -m training.toyworld``, docs/toyworld.md).
# WANFLY_TOY_WORLD_DIR points there when the package is installed outside the repository (the Docker image).
TOY_WORLD_DIR = os.environ.get("WANFLY_TOY_WORLD_DIR") or os.path.join(  # <repo>/worlds/toy
    os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "worlds", "toy")


def register_world(name: str, factory: Callable) -> None:
    """Plug in a named world: ``factory(settings, device, torch_dtype) -> World``."""
    WORLD_FACTORIES[name] = factory


def toy_world_ships() -> bool:
    """Whether the committed toy world is present (``worlds`` registers it as "toy" then)."""
    return os.path.isfile(os.path.join(TOY_WORLD_DIR, "world_config.json"))


def world_names() -> list[str]:
    """The names ``--world`` accepts besides a folder: "random", "toy" when it ships, and every registered world."""
    return sorted({"random", *(["toy"] if toy_world_ships() else []), *WORLD_FACTORIES})


def default_world() -> str:
    """"toy" when the committed toy world is present, else "random" (for ``Settings.world``'s default)."""
    return "toy" if toy_world_ships() else "random"


def with_world_resolved(settings: Settings) -> Settings:
    """``--world auto`` (the default) becomes the toy world when it ships, else the random preset."""
    return replace(settings, world=default_world()) if settings.world == "auto" else settings


def check_world_args(settings: Settings) -> None:
    """Fail fast (before starting a server) on paths and names that cannot load."""
    settings = with_world_resolved(settings)
    if settings.model_dir:
        check_model_dir(settings.model_dir)
    elif settings.world not in world_names() and not os.path.isdir(settings.world):
        raise ValueError(f"world: {settings.world!r} is neither 'random', a registered world "
                         f"({[name for name in world_names() if name != 'random']}) nor a folder")
    if settings.artifacts and not os.path.isfile(os.path.join(settings.artifacts, CONFIG_NAME)):
        raise ValueError(f"artifacts: {settings.artifacts!r} has no {CONFIG_NAME}")
