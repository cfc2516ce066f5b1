"""The project's Python dependencies, from pyproject.toml, for installs that must not need the code yet.

``python scripts/deps.py requirements serve``  the requirement lines of the package and its ``serve`` extra (the
    Dockerfile installs these with ``-c constraints.txt`` before copying the code, so code edits reuse the layer)
``python scripts/deps.py freeze > constraints.txt``  pin every distribution the package needs with its dev extra
    (serve, train, test tools), at the versions installed in this environment: the tested set that CI
    (scripts/setup.sh), the Dockerfile and a user's setup all install. Run it from the tested virtualenv.
"""
from __future__ import annotations

import re
import sys
from importlib import metadata
from pathlib import Path

import tomllib

try:  # only freeze needs it; "requirements" runs on a bare base image
    from packaging.requirements import Requirement
except ImportError:
    Requirement = None

ROOT = Path(__file__).resolve().parents[1]
# Installed with torch's own wheel and specific to its CUDA build: a CUDA image brings its own, so not pinned.
UNPINNED = re.compile(r"^(nvidia-.*|triton|cuda-.*)$")


def requirements(extras: list[str]) -> list[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    lines = list(project["dependencies"])
    pending, seen = list(extras), set()
    while pending:
        extra = pending.pop()
        if extra in seen:
            continue
        seen.add(extra)
        for requirement in project["optional-dependencies"][extra]:
            inner = re.fullmatch(rf"{project['name']}\[(.+)\]", requirement)
            if inner:  # "wanfly[serve,train]": the extras it names
                pending += inner.group(1).split(",")
            elif requirement not in lines:
                lines.append(requirement)
    return lines


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def freeze(extras: list[str]) -> list[str]:
    """name==version for the requirements and everything they need, as installed here (markers honoured)."""
    pinned: dict[str, str] = {}
    pending = [(Requirement(line), "") for line in requirements(extras)]
    done = set()
    while pending:
        requirement, extra = pending.pop()
        if requirement.marker and not requirement.marker.evaluate({"extra": extra}):
            continue
        name = canonical(requirement.name)
        for wanted in sorted(requirement.extras) or [""]:
            if (name, wanted) in done or UNPINNED.match(name):
                continue
            done.add((name, wanted))
            try:
                dist = metadata.distribution(name)
            except metadata.PackageNotFoundError:
                continue  # an optional dependency of a dependency, not installed here
            pinned[name] = f"{name}=={dist.version.split('+')[0]}"  # 2.14.1+cpu -> 2.14.1: any build of it
            pending += [(Requirement(text), wanted) for text in dist.requires or []]
    return sorted(pinned.values())


def main(argv: list[str]) -> int:
    if len(argv) >= 1 and argv[0] == "requirements":
        print("\n".join(requirements(argv[1:])))
    elif argv[:1] == ["freeze"]:
        print("# The tested versions: every distribution wanfly[dev] needs, as installed where the test suite passed.")
        print("# Regenerate from that virtualenv: python scripts/deps.py freeze > constraints.txt")
        print("# Used by scripts/setup.sh (CI: .ci/run) and the Dockerfile: pip install -c constraints.txt ...")
        print("# torch's CUDA libraries (nvidia-*, triton) are left to the torch build (the CUDA image's own).")
        print("\n".join(freeze(["dev"])))
    else:
        print(__doc__, file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
