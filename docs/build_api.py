"""Build the HTML API reference from the docstrings with pdoc.

    python docs/build_api.py [--out DIR]        # default: docs/api/ (git-ignored)

The test suite calls :func:`build` (``tests/test_api_reference.py``), so a reference
that no longer builds fails CI.  The build fails, listing every problem, when a
documented module does not import, when a name in a module's ``__all__`` does not
resolve, or when pdoc itself warns (an annotation it cannot evaluate, a member it
cannot read, ...): each of those is a broken reference.

``nas`` and ``nas.testing`` export their public names lazily, through a module
``__getattr__``.  pdoc only reads a module's ``__dict__`` for the names in
``__all__``, so the build resolves each of them first (exactly what
``getattr(module, name)`` does for a user) and the package pages document them.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import re
import sys
import traceback
import warnings
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = ROOT / "docs" / "api"

#: The documented modules, each rendered to ``<out>/<a>/<b>.html`` (``nas`` to ``<out>/nas.html``).
MODULES = (
    "nas",
    "nas.core.budget",
    "nas.core.allocation",
    "nas.core.space",
    "nas.core.controller",
    "nas.core.evaluator",
    "nas.core.plugins",
    "nas.core.registry",
    "nas.core.errors",
    "nas.pipeline.config",
    "nas.pipeline.result",
    "nas.pipeline.executors",
    "nas.pipeline.tuning",
    "nas.artifact.serving",
    "nas.artifact.native",
    "nas.artifact.export",
    "nas.artifact.torchrec_tables",
    "nas.testing",
)


#: pdoc warnings that are known false alarms: (regular expression searched in the message, why it is harmless).
KNOWN_WARNINGS = (
    (
        (r"^Error parsing type annotation hypothesis\.strategies\.SearchStrategy\[ForwardRef\('Layout'\)\] "
         r"for nas\.testing(\.spaces)?\.layouts\."),
        ("hypothesis's @st.composite wraps `layouts` in a function whose globals are hypothesis's own, so pdoc "
         "cannot evaluate its `Layout` forward reference; the page shows the annotation as written"),
    ),
)


class BrokenReference(RuntimeError):
    """The reference did not build cleanly; the message lists every problem."""


def page(out: Path, module: str) -> Path:
    """The HTML page pdoc writes for ``module`` under ``out``."""
    return Path(out) / (module.replace(".", "/") + ".html")


def _short_error() -> str:
    return traceback.format_exc(limit=-3).rstrip()


def _resolve_exports(module: ModuleType) -> list[str]:
    """Put every name of ``module.__all__`` into its ``__dict__``, where pdoc looks; returns the problems."""
    problems = []
    for name in getattr(module, "__all__", ()):
        if name in vars(module):
            continue
        try:
            value = getattr(module, name)
        except Exception:  # noqa: BLE001 - any failure here is a broken reference
            problems.append(f"{module.__name__}.__all__ lists {name!r}, which does not resolve:\n{_short_error()}")
            continue
        setattr(module, name, value)
    return problems


def build(out: Path | str = DEFAULT_OUT, modules: tuple[str, ...] = MODULES) -> list[Path]:
    """Render ``modules`` to HTML under ``out``; returns the module pages.

    Raises:
        BrokenReference: a module does not import, a name in an ``__all__`` does not
            resolve, or pdoc warned while rendering.
    """
    import pdoc
    import pdoc.doc
    import pdoc.render

    out = Path(out)
    problems: list[str] = []
    found: list[str] = []
    for name in modules:
        try:
            module = importlib.import_module(name)
        except Exception:  # noqa: BLE001
            problems.append(f"cannot import {name}:\n{_short_error()}")
            continue
        found.append(name)
        problems += _resolve_exports(module)
    if problems:
        raise BrokenReference(_report(problems))

    pdoc.render.configure(docformat="google", search=True, show_source=True)
    pdoc_dir = Path(pdoc.__file__).resolve().parent
    # Only the listed modules: a package spec would also pull in any submodule named in its __all__.
    only_listed = "!(?!(?:" + "|".join(map(re.escape, found)) + ")$)"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            pdoc.pdoc(*found, only_listed, output_directory=out)
            # pdoc's index.html redirects to nas.html, whose menu lists no submodule (only the names
            # in ``nas.__all__``): write its module list instead, so every page is one click away.
            index = pdoc.render.env.get_template("index.html.jinja2").render(
                all_modules={name: pdoc.doc.Module.from_name(name) for name in found}, root_module_name=None)
            (out / "index.html").write_text(index, encoding="utf-8")
        except Exception:  # noqa: BLE001
            problems.append(f"pdoc failed:\n{_short_error()}")
    for w in caught:
        message = str(w.message)
        if not Path(w.filename).resolve().is_relative_to(pdoc_dir):
            continue  # a third-party library warning on import: not about the reference
        if not any(re.search(pattern, message) for pattern, _ in KNOWN_WARNINGS):
            problems.append(f"pdoc: {message}")
    if problems:
        raise BrokenReference(_report(problems))
    pages = [page(out, name) for name in found]
    missing = [str(p) for p in pages if not p.is_file()]
    if missing:
        raise BrokenReference(_report([f"pdoc wrote no page {p}" for p in missing]))
    return pages


def _report(problems: list[str]) -> str:
    return f"the API reference is broken ({len(problems)} problem(s)):\n" + "\n".join(f"- {p}" for p in problems)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"output folder (default: {DEFAULT_OUT})")
    args = parser.parse_args(argv)
    if importlib.util.find_spec("nas") is None:  # a checkout without ``pip install -e .``
        sys.path.insert(0, str(ROOT))
    try:
        import pdoc  # noqa: F401
    except ImportError:
        print("pdoc is not installed: pip install -e '.[dev]'", file=sys.stderr)
        return 2
    try:
        build(args.out)
    except BrokenReference as e:
        print(e, file=sys.stderr)
        return 1
    print(f"API reference: {args.out / 'index.html'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
