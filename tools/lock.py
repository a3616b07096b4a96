"""Print the constraints (lock) file `make test` and `make demo` install with: every package of the running
environment pinned at its installed version, so a fresh machine resolves what CI was last green on.

    make lock                          # a throwaway venv with what pip resolves today, this script over it
    python tools/lock.py > constraints.txt

Left out: torch (the Makefile's TORCH picks the build), lowp itself and pip (what `python -m venv` brings). A pin whose
release needs a newer Python than lowp's floor carries that release's Requires-Python as an environment marker, so an
older interpreter takes the newest release that supports it instead of failing to install.
"""

import importlib.metadata as md
import sys

from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name

SKIP = {"torch", "lowp-ops", "pip"}


def _marker(requires_python: str | None, floor: str) -> str:
    """`python_full_version >= "3.11"`-style marker from a Requires-Python spec that excludes lowp's floor, else ''."""
    spec = SpecifierSet(requires_python or "")
    if spec.contains(floor):
        return ""
    return " and ".join(f'python_full_version {s.operator} "{s.version}"' for s in sorted(spec, key=str))


def lock_lines() -> list[str]:
    floor = next(s.version for s in SpecifierSet(md.metadata("lowp-ops")["Requires-Python"]) if s.operator == ">=")
    lines = {}
    for dist in md.distributions():  # in sys.path order: the first of a name is the one imports find
        name = canonicalize_name(dist.metadata["Name"])
        if name in SKIP or name in lines:
            continue
        marker = _marker(dist.metadata["Requires-Python"], floor)
        lines[name] = f"{name}=={dist.version}" + (f" ; {marker}" if marker else "")
    for line in lines.values():  # every pin must parse as pip reads it
        Requirement(line)
    return [lines[name] for name in sorted(lines)]


if __name__ == "__main__":
    header = (f"# Written by `make lock` (tools/lock.py) on Python {sys.version_info.major}.{sys.version_info.minor}: "
              "the versions `make test` was last green on.")
    print("\n".join([header, *lock_lines()]))
