"""Generate the student and autograder versions of every assignment with otter-grader.

    python notebooks/assignments/make_assignments.py [--out build/assignments] [--no-run-tests]
                                                      [a1_scaling_rules ...]

For each master notebook `aN_*.ipynb` next to this file, `otter assign` (otter-grader's own
tool, run here through its Python API) writes

    <out>/<name>/student/<name>.ipynb           solutions and hidden tests removed: hand this out
    <out>/<name>/student/effnet_edu/            the package the notebook imports, so the folder
                                                 runs anywhere torch is installed, WITHOUT what
                                                 the assignment asks for (`GRADED`: each is a
                                                 stub that raises NotImplementedError)
    <out>/<name>/student/results/...            the stored results the notebook reads (`DATA`:
                                                 A3 reads parts of the two scale studies), at
                                                 the same paths as in the repository
    <out>/<name>/autograder/<name>.ipynb        the solutions, with every test
    <out>/<name>/autograder/<name>-autograder.zip   upload to Gradescope, or grade locally with
                                                 `otter run` / `otter grade`

and, unless --no-run-tests, grades the solutions against every public and hidden test with that
zip (otter's own grading, `otter run`, in a kernel: the handout's package and data, as a
grading service would see them), failing if any test fails. Nothing here needs the network or
Docker.

Two things are added to what `otter assign` does, both so that a build is reproducible:

- otter gives the cells it creates (the `grader.check` cells, ...) random ids and names the zip
  with a timestamp. Here every cell id is derived from the cell's position and content, and the
  zip is rewritten with its entries sorted, fixed dates and no timestamp in its name: building
  twice gives byte-identical files.
- The zip also carries the `effnet_edu` package (as `files/effnet_edu/`, which otter copies next
  to each submission before grading), since the notebooks import it and it is not on PyPI: the
  handout's copy, graded code left out, so a submission cannot wrap the package's solution. The
  files in `DATA` travel the same way (`files/results/...`).
  The hidden tests do not trust it as a reference (a submission could patch it): they compare
  with values and formulas written into the tests, torch's FlopCounterMode and torchvision, and
  check that each graded object was defined in the notebook, not imported.

The student's copy of the package is the one thing that differs from the repository: every
function and class in `GRADED` is replaced by a stub (same name, same base classes) whose call
raises NotImplementedError naming the notebook, so the handout does not contain the solutions
and the rest of the package still imports and works.

Used by: `make assignments`, tests/test_assignments.py, docs/teaching.md.
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
import sys
import time
import zipfile
from pathlib import Path

import nbformat

HERE = Path(__file__).resolve().parent
REPOSITORY = HERE.parents[1]
PACKAGE = REPOSITORY / "effnet_edu"
DEFAULT_OUT = REPOSITORY / "build" / "assignments"
ZIP_DATE = (1980, 1, 1, 0, 0, 0)  # the earliest date a zip file can hold
EXECUTABLES = {"run_autograder", "setup.sh"}


# What each assignment asks the student to write, stubbed in the handout: {module file: {name:
# what the student writes in its place}}; the stub's error message says so.
GRADED = {
    "a1_scaling_rules": {
        "scaling.py": {
            "compound_coefficients": "compound_coefficients (question 3)",
            "flops_multiplier": "flops_multiplier (question 3)",
            "round_filters": "round_filters (question 1)",
            "round_repeats": "round_repeats (question 2)",
        },
        "profiling.py": {"conv2d_macs": "conv2d_macs (question 4)"},
    },
    "a2_build_mbconv": {
        "blocks.py": {
            "SqueezeExcitation": "SqueezeExcitation (question 1)",
            "stochastic_depth": "stochastic_depth (question 2)",
            "MBConv": "MBConv (question 3)",
        }
    },
    "a3_scale_and_look": {
        "study.py": {
            "scaled_shape": "flops_ratio and nearest_shape (question 1)",
            "mcnemar": "mcnemar_p and compare (question 2)",
            "attention_of": "attention_of (question 3)",
        },
        "attention.py": {"energy_share": "energy_share (question 3)"},
    },
}

# What each assignment reads besides the package: files of this repository, copied next to the
# handout's notebook and into the zip's files/ (so next to each submission) at the same relative
# paths. A3 reads finished models of the two scale studies, named one by one: the 40-epoch study
# (still training its 4x and 8x models, which A3 does not read) and the 20-epoch study, its
# short-budget arm. A run of a study only adds files, so these stay as they are and the build
# stays reproducible while it runs.
_STUDY = "results/scale_study"  # the 40-epoch study
_HALF = "results/scale_study_half"  # the 20-epoch study
_GRID_SHAPES = (  # step 1: the ten grid candidates at 2x the FLOPs (seeds 0 and 1)
    "d0.7000-w0.5000-r79",
    "d0.7000-w0.5516-r65",
    "d0.7000-w0.7410-r54",
    "d0.7402-w0.5507-r66",
    "d0.7615-w0.5000-r69",
    "d0.7748-w0.6679-r61",
    "d0.8496-w0.5311-r65",
    "d0.9763-w0.7185-r54",
    "d1.0497-w0.5500-r61",
    "d1.5005-w0.5000-r54",
)
_STEP2_SHAPES = (  # the four 2x models of step 2 (resolution, the paper's, depth, width only)
    "d0.7000-w0.5000-r79",
    "d0.8496-w0.5311-r65",
    "d1.5005-w0.5000-r54",
    "d0.7000-w0.7410-r54",
)
DATA = {
    "a3_scale_and_look": [
        # the 40-epoch study: its baseline (seeds 0-3; 3 is the one with weights), step 1's grid,
        # seed 2 (step 2's own) of the four 2x models, and three of its saved models
        f"{_STUDY}/study.json",
        *[f"{_STUDY}/runs/d0.7000-w0.5000-r54-e40-s{seed}.json" for seed in range(4)],
        *[f"{_STUDY}/runs/{shape}-e40-s{seed}.json" for shape in _GRID_SHAPES for seed in (0, 1)],
        *[f"{_STUDY}/runs/{shape}-e40-s2.json" for shape in _STEP2_SHAPES],
        f"{_STUDY}/models/baseline-x1-seed3.pt",
        f"{_STUDY}/models/compound_paper-x2-seed2.pt",
        f"{_STUDY}/models/resolution-x2-seed2.pt",
        # the 20-epoch study: the same baseline (20 epochs, seeds 0-3; 5 epochs, seeds 0-2), the
        # same grid and seed 2 at 2x after 20 epochs, and all three seeds of the 5-epoch 2x runs
        f"{_HALF}/study.json",
        *[f"{_HALF}/runs/d0.7000-w0.5000-r54-e20-s{seed}.json" for seed in range(4)],
        *[f"{_HALF}/runs/d0.7000-w0.5000-r54-e5-s{seed}.json" for seed in range(3)],
        *[f"{_HALF}/runs/{shape}-e20-s{seed}.json" for shape in _GRID_SHAPES for seed in (0, 1)],
        *[
            f"{_HALF}/runs/{shape}-e{epochs}-s{seed}.json"
            for shape in _STEP2_SHAPES
            for epochs, seeds in ((20, (2,)), (5, (0, 1, 2)))
            for seed in seeds
        ],
    ],
}


def stub_source(source: str, names: dict[str, str], assignment: str) -> str:
    """`source` with each top-level function or class in `names` replaced by a stub that raises
    NotImplementedError naming what the student writes instead (`names[name]`); a class keeps
    its bases, so isinstance checks still work."""
    import ast

    tree, lines = ast.parse(source), source.splitlines(keepends=True)
    nodes = {n.name: n for n in tree.body if isinstance(n, (ast.FunctionDef, ast.ClassDef))}
    missing = [name for name in names if name not in nodes]
    if missing:
        raise RuntimeError(f"GRADED names {missing} are not top-level definitions")
    for name in sorted(names, key=lambda n: -nodes[n].lineno):  # from the bottom up
        node = nodes[name]
        start = min([node.lineno] + [d.lineno for d in node.decorator_list]) - 1
        message = (
            f"effnet_edu's {name} is left out of the handout: you write {names[name]} "
            f"yourself, in {assignment}.ipynb"
        )
        note = f'    """Left out of the handout: see {assignment}.ipynb."""\n'
        if isinstance(node, ast.ClassDef):
            bases = ", ".join(ast.unparse(b) for b in node.bases)
            stub = (
                f"class {name}({bases}):\n{note}\n    def __init__(self, *args, **kwargs):\n"
                f"        raise NotImplementedError({message!r})\n"
            )
        else:
            stub = (
                f"def {name}(*args, **kwargs):\n{note}    raise NotImplementedError({message!r})\n"
            )
        lines[start : node.end_lineno] = [stub]
    return "".join(lines)


def masters() -> list[Path]:
    """The master notebooks, in order: a1_..., a2_..., ..."""
    return sorted(HERE.glob("a[0-9]*_*.ipynb"))


def normalise_cell_ids(path: Path) -> None:
    """Give every cell an id derived from its position and content (otter's are random)."""
    notebook = nbformat.read(path, as_version=4)
    for index, cell in enumerate(notebook.cells):
        digest = hashlib.sha256(f"{index}\n{cell.cell_type}\n{cell.source}".encode()).hexdigest()
        cell["id"] = digest[:12]
    nbformat.write(notebook, path)


def package_files() -> list[Path]:
    """The effnet_edu sources that travel with the assignments (no caches)."""
    return sorted(p for p in PACKAGE.rglob("*.py") if "__pycache__" not in p.parts)


def data_files(assignment: str) -> list[str]:
    """The repository files `assignment` reads (`DATA`), relative paths; refuses if one is
    missing (a scale study may not have trained it yet)."""
    missing = [name for name in DATA.get(assignment, []) if not (REPOSITORY / name).is_file()]
    if missing:
        raise FileNotFoundError(
            f"{assignment} reads {missing[0]}"
            + (f" and {len(missing) - 1} more files" if len(missing) > 1 else "")
            + ", not in this repository: train them first (effnet-edu scale-study)"
        )
    return sorted(DATA.get(assignment, []))


def repack_zip(source: Path, destination: Path, assignment: str) -> None:
    """Rewrite otter's autograder zip deterministically, adding effnet_edu under files/ (the
    handout's copy, with the graded code left out: a submission could otherwise wrap it) and the
    assignment's `DATA`."""
    entries: dict[str, bytes] = {}
    with zipfile.ZipFile(source) as original:
        for info in original.infolist():
            if not info.is_dir():
                entries[info.filename] = original.read(info)
    graded = GRADED.get(assignment, {})
    for path in package_files():
        relative = path.relative_to(PACKAGE).as_posix()
        names = graded.get(relative)
        text = stub_source(path.read_text(), names, assignment).encode() if names else None
        entries[f"files/effnet_edu/{relative}"] = text or path.read_bytes()
    for name in data_files(assignment):
        entries[f"files/{name}"] = (REPOSITORY / name).read_bytes()
    with zipfile.ZipFile(destination, "w", compression=zipfile.ZIP_DEFLATED) as repacked:
        for name in sorted(entries):
            info = zipfile.ZipInfo(name, date_time=ZIP_DATE)
            info.compress_type = zipfile.ZIP_DEFLATED
            mode = 0o755 if Path(name).name in EXECUTABLES else 0o644
            info.external_attr = (0o100000 | mode) << 16  # a regular file with these permissions
            repacked.writestr(info, entries[name])


def copy_package(destination: Path, assignment: str | None = None) -> None:
    """Copy effnet_edu into `destination`; for a student folder (`assignment` given), with the
    assignment's `GRADED` functions and classes replaced by stubs."""
    target = destination / "effnet_edu"
    shutil.rmtree(target, ignore_errors=True)
    graded = GRADED.get(assignment, {}) if assignment else {}
    for path in package_files():
        out = target / path.relative_to(PACKAGE)
        out.parent.mkdir(parents=True, exist_ok=True)
        names = graded.get(path.relative_to(PACKAGE).as_posix())
        if names:
            out.write_text(stub_source(path.read_text(), names, assignment))
        else:
            shutil.copyfile(path, out)


def copy_data(destination: Path, assignment: str) -> None:
    """Copy the assignment's `DATA` into `destination`, at the same relative paths."""
    for name in data_files(assignment):
        (destination / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(REPOSITORY / name, destination / name)


def grade_solutions(result: Path) -> None:
    """Grade the autograder notebook with the zip that goes to the grading service (otter's own
    `otter run`, in a kernel, in a temporary folder holding the zip's files/: the handout's
    package and data); raise unless it scores full marks on every public and hidden test."""
    import contextlib
    import io
    import os

    from otter.api import grade_submission

    name, cwd = result.name, os.getcwd()
    try:
        with contextlib.redirect_stderr(io.StringIO()):  # the kernel's warnings, not failures
            grades = grade_submission(
                str(result / "autograder" / f"{name}.ipynb"),
                str(result / "autograder" / f"{name}-autograder.zip"),
                quiet=True,
            )
    finally:
        os.chdir(cwd)  # otter grades in a folder of its own
    if grades.total != grades.possible:
        raise RuntimeError(
            f"Some autograder tests failed in the autograder notebook:\n{grades.summary()}"
        )


def build_one(master: Path, out: Path, run_tests: bool = True) -> Path:
    """Run `otter assign` on one master, make its output reproducible and, with `run_tests`, grade
    the solutions with the zip that goes to the grading service; returns its folder."""
    from otter.assign import main as otter_assign

    name = master.stem
    result = out / name
    shutil.rmtree(result, ignore_errors=True)
    result.mkdir(parents=True)
    data_files(name)  # before otter's work: a missing file stops the build at once
    # otter's own test run would grade with its zip, which lacks the package and the data: the
    # solutions are graded below, with the zip this function writes.
    otter_assign(str(master), str(result), no_pdfs=True, no_run_tests=True)

    autograder, student = result / "autograder", result / "student"
    zips = sorted(autograder.glob(f"{name}-autograder_*.zip"))
    if len(zips) != 1:
        raise RuntimeError(
            f"expected one autograder zip from otter assign in {autograder}, "
            f"found {[z.name for z in zips]}"
        )
    repack_zip(zips[0], autograder / f"{name}-autograder.zip", name)
    zips[0].unlink()
    for notebook in (autograder / master.name, student / master.name):
        normalise_cell_ids(notebook)
    copy_package(student, name)
    copy_data(student, name)
    if run_tests:
        grade_solutions(result)
    return result


def describe(result: Path) -> str:
    """One line per question: points, public and hidden tests (from the autograder notebook)."""
    notebook = nbformat.read(result / "autograder" / f"{result.name}.ipynb", as_version=4)
    lines = []
    for name, test in notebook.metadata["otter"]["tests"].items():
        cases = test["suites"][0]["cases"]
        hidden = sum(case["hidden"] for case in cases)
        lines.append(
            f"    {name}: {test.get('points', len(cases))} points, "
            f"{len(cases) - hidden} public and {hidden} hidden test(s)"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "names", nargs="*", help="assignments to build (default: all), e.g. a1_scaling_rules"
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=DEFAULT_OUT,
        help=f"build folder (default: {DEFAULT_OUT.relative_to(REPOSITORY)})",
    )
    parser.add_argument(
        "--no-run-tests",
        action="store_true",
        help="do not grade the solutions against the tests (faster)",
    )
    args = parser.parse_args(argv)

    available = {m.stem: m for m in masters()}
    unknown = [n for n in args.names if n not in available]
    if unknown:
        parser.error(f"unknown assignment(s) {unknown}; available: {', '.join(available)}")
    selected = [available[n] for n in args.names] or list(available.values())
    for master in selected:
        start = time.perf_counter()
        result = build_one(master, args.out.resolve(), run_tests=not args.no_run_tests)
        checked = "solutions pass every test" if not args.no_run_tests else "tests not run"
        print(f"{master.stem}: {result} ({checked}, {time.perf_counter() - start:.0f} s)")
        print(describe(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
