"""The classroom assignments (notebooks/assignments/, otter-grader format) and their build.

What is checked, per assignment:

- the master's solutions pass every public and hidden test, graded by otter itself
  (`otter assign` with run_tests, which executes the autograder notebook in a kernel);
- every question has public and hidden tests, and the student version keeps only the public ones;
- the student version has its solutions and hidden tests removed, and fails every autograded
  question as handed out (graded against all tests; for A1 also by a real `otter run` with the
  zip that goes to Gradescope);
- for every question, plausible wrong answers (the solution with one typical mistake) fail at
  least one hidden test, and those meant to slip past the public tests do;
- generating twice gives byte-identical student and autograder folders (make_assignments.py
  derives cell ids from content and writes the zip with fixed dates; see its docstring);
- the masters are executed top to bottom with `True` as every test cell's stored output (otter
  takes a test's expected output from the master), and neither the masters nor the build folder
  are collected by `pytest --nbval`.

The mutant checks run the autograder notebook's cells in this process (no kernel: fast) and
grade with otter's own test classes; the in-process run of the unmodified solutions must pass
every test first, so a mutant's failures are its own.
"""

from __future__ import annotations

import copy
import importlib.util
import json
import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]
ASSIGNMENTS = ROOT / "notebooks" / "assignments"

_spec = importlib.util.spec_from_file_location(
    "make_assignments", ASSIGNMENTS / "make_assignments.py"
)
make_assignments = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(make_assignments)

# otter 7 with pandas 3 and traitlets: deprecation noise from inside otter, not from us.
pytestmark = [
    pytest.mark.filterwarnings("ignore:The inplace keyword in DataFrame.drop"),
    pytest.mark.filterwarnings("ignore:Traits should be given as instances"),
]

MASTERS = {path.stem: path for path in make_assignments.masters()}
NAMES = sorted(MASTERS)

# Plausible wrong answers: (question, mistake, [(solution text, wrong text), ...], passes the
# public tests?). Each replacement must match exactly one place in the solutions.
MUTANTS = {
    "a1_scaling_rules": [
        ("q1_round_filters", "no 10 % rule", [("if rounded < 0.9 * scaled:", "if False:")], True),
        (
            "q1_round_filters",
            "imports the package's function instead of writing it",
            [
                (
                    "def round_filters(channels, width, divisor=8):",
                    "from effnet_edu.scaling import round_filters\n\n\n"
                    "def _not_mine(channels, width, divisor=8):",
                )
            ],
            True,
        ),
        (
            "q1_round_filters",
            "no 10 % rule, and patches the package with it",
            [
                ("if rounded < 0.9 * scaled:", "if False:"),
                (
                    "    return int(rounded)\n",
                    "    return int(rounded)\n\n\nimport effnet_edu.scaling\n"
                    "effnet_edu.scaling.round_filters = round_filters\n",
                ),
            ],
            True,
        ),
        (
            "q1_round_filters",
            "Python's round() to a multiple of 8",
            [
                (
                    "int(scaled + divisor / 2) // divisor * divisor",
                    "round(scaled / divisor) * divisor",
                )
            ],
            True,
        ),
        (
            "q2_round_repeats",
            "round() instead of ceil",
            [("int(math.ceil(depth * repeats))", "round(depth * repeats)")],
            True,
        ),
        (
            "q2_round_repeats",
            "int() truncates",
            [("int(math.ceil(depth * repeats))", "int(depth * repeats)")],
            True,
        ),
        (
            "q3_compound",
            "multipliers linear in phi",
            [
                (
                    "return alpha**phi, beta**phi, gamma**phi",
                    "return 1 + (alpha - 1) * phi, 1 + (beta - 1) * phi, 1 + (gamma - 1) * phi",
                )
            ],
            True,
        ),
        (
            "q3_compound",
            "ignores its alpha, beta, gamma",
            [("return alpha**phi, beta**phi, gamma**phi", "return 1.2**phi, 1.1**phi, 1.15**phi")],
            True,
        ),
        (
            "q3_compound",
            "FLOPs linear in width and resolution",
            [("depth * width**2 * resolution**2", "depth * width * resolution")],
            True,
        ),
        (
            "q4_conv_macs",
            "forgets groups",
            [("(conv.in_channels // conv.groups)", "conv.in_channels")],
            False,
        ),
        (
            "q4_conv_macs",
            "ignores the stride",
            [
                ("(input_size + 2 * p_h - k_h) // s_h + 1", "input_size + 2 * p_h - k_h + 1"),
                ("(input_size + 2 * p_w - k_w) // s_w + 1", "input_size + 2 * p_w - k_w + 1"),
            ],
            True,
        ),
        (
            "q5_stage_tables",
            "round() for repeats",
            [("round_repeats(repeats, depth))", "round(repeats * depth))")],
            True,
        ),
        (
            "q5_stage_tables",
            "stem and head not scaled",
            [
                (
                    "round_filters(STEM_CHANNELS, width), round_filters(HEAD_CHANNELS, width)",
                    "STEM_CHANNELS, HEAD_CHANNELS",
                )
            ],
            True,
        ),
    ],
    "a2_build_mbconv": [
        (
            "q3_mbconv",
            "imports the package's MBConv instead of writing it",
            [
                (
                    "class MBConv(nn.Module):",
                    "from effnet_edu.blocks import MBConv\n\n\nclass _NotMine(nn.Module):",
                )
            ],
            True,
        ),
        (
            "q1_squeeze_excitation",
            "no sigmoid",
            [
                (
                    "scale = torch.sigmoid(self.expand(self.act(self.reduce(scale))))",
                    "scale = self.expand(self.act(self.reduce(scale)))",
                )
            ],
            True,
        ),
        (
            "q1_squeeze_excitation",
            "ReLU instead of swish",
            [
                (
                    "self.act = nn.SiLU()\n        self.expand = nn.Conv2d("
                    "squeeze_channels, channels, 1)",
                    "self.act = nn.ReLU()\n        self.expand = nn.Conv2d("
                    "squeeze_channels, channels, 1)",
                )
            ],
            True,
        ),
        (
            "q2_stochastic_depth",
            "survivors not rescaled",
            [("return x * keep / survival", "return x * keep")],
            True,
        ),
        (
            "q2_stochastic_depth",
            "one coin per element, not per sample",
            [("torch.empty(x.shape[0], 1, 1, 1,", "torch.empty(x.shape,")],
            True,
        ),
        (
            "q2_stochastic_depth",
            "active at evaluation",
            [("if not training or drop_probability == 0.0:", "if drop_probability == 0.0:")],
            False,
        ),
        (
            "q3_mbconv",
            "squeeze width from the expanded channels",
            [("max(1, int(in_channels * se_ratio))", "max(1, int(expanded * se_ratio))")],
            True,
        ),
        (
            "q3_mbconv",
            "residual added when the stride is 2",
            [
                (
                    "self.use_residual = stride == 1 and in_channels == out_channels",
                    "self.use_residual = in_channels == out_channels",
                )
            ],
            True,
        ),
        (
            "q3_mbconv",
            "stochastic depth also at evaluation",
            [
                (
                    "stochastic_depth(out, self.stochastic_depth, self.training)",
                    "stochastic_depth(out, self.stochastic_depth, True)",
                )
            ],
            True,
        ),
        (
            "q3_mbconv",
            "activation after the projection",
            [
                (
                    "ConvBNAct(expanded, out_channels, 1, activation=False)",
                    "ConvBNAct(expanded, out_channels, 1)",
                )
            ],
            True,
        ),
        (
            "q4_stages",
            "schedule (i + 1) / N",
            [
                (
                    "stochastic_depth=stochastic_depth * index / total",
                    "stochastic_depth=stochastic_depth * (index + 1) / total",
                )
            ],
            True,
        ),
    ],
    "a3_scale_and_look": [
        (
            "q1_search",
            "FLOPs from the formula d w^2 r^2, not counted",
            [
                (
                    "study.shape_flops(depth, width, resolution) / study.shape_flops(*BASE)",
                    "(depth / BASE[0]) * (width / BASE[1]) ** 2 * (resolution / BASE[2]) ** 2",
                )
            ],
            False,
        ),
        (
            "q1_search",
            "the first candidate within 5 %, not the nearest",
            [
                (
                    "        if error < best_error:\n            best, best_error = shape, error\n",
                    "        if abs(flops_ratio(*shape) / target - 1) <= 0.05:\n"
                    "            return shape\n",
                )
            ],
            True,
        ),
        (
            "q1_search",
            "a tie keeps the larger value",
            [("if error < best_error:", "if error <= best_error:")],
            True,
        ),
        (
            "q1_search",
            "never below the target",
            [
                (
                    "        error = abs(math.log(flops_ratio(*shape) / target))\n",
                    "        if flops_ratio(*shape) < target:\n            continue\n"
                    "        error = abs(math.log(flops_ratio(*shape) / target))\n",
                )
            ],
            False,
        ),
        (
            "q1_search",
            "ignores its target",
            [("math.log(flops_ratio(*shape) / target)", "math.log(flops_ratio(*shape) / TARGET)")],
            True,
        ),
        (
            "q1_search",
            "calls the study's scaled_shape instead of searching",
            [
                (
                    "    best, best_error = None, math.inf\n",
                    "    return tuple(study.scaled_shape(BASELINE, study.DIRECTIONS[dimension], "
                    "target))\n",
                )
            ],
            True,
        ),
        (
            "q2_mcnemar",
            "one-sided p-value",
            [("return min(1.0, 2 * tail)", "return min(1.0, tail)")],
            True,
        ),
        (
            "q2_mcnemar",
            "two-sided p-value not capped at 1",
            [("return min(1.0, 2 * tail)", "return 2 * tail")],
            False,
        ),
        (
            "q2_mcnemar",
            "normal approximation instead of the exact binomial",
            [
                (
                    "tail = sum(math.comb(n, i) for i in range(k + 1)) / 2**n",
                    "tail = 0.5 * math.erfc((n / 2 - k - 0.5) / math.sqrt(max(n, 1) / 4) "
                    "/ math.sqrt(2))",
                )
            ],
            True,
        ),
        (
            "q2_mcnemar",
            "disagreement taken as different predictions, not right against wrong",
            [
                (
                    "only_a, only_b = int((right_a & ~right_b).sum()), "
                    "int((right_b & ~right_a).sum())",
                    "differ = predicted_a != predicted_b\n    only_a, only_b = "
                    "int((right_a & differ).sum()), int((~right_a & differ).sum())",
                )
            ],
            True,
        ),
        (
            "q2_mcnemar",
            "difference over the disagreements, not over all test images",
            [
                (
                    "difference = (only_a - only_b) / len(TEST_LABELS)",
                    "difference = (only_a - only_b) / (only_a + only_b)",
                )
            ],
            False,
        ),
        (
            "q2_mcnemar",
            "the two models swapped",
            [
                (
                    'compare(model_row("compound_paper", seed), model_row("resolution", seed))',
                    'compare(model_row("resolution", seed), model_row("compound_paper", seed))',
                )
            ],
            True,
        ),
        (
            "q3_attention",
            "no guard for an all-zero map",
            [
                (
                    "np.where(total > 0, inside / np.where(total > 0, total, 1.0), 0.0)",
                    "inside / total",
                )
            ],
            False,
        ),
        (
            "q3_attention",
            "mass over the mask's area (the mean map value on the object)",
            [("total = cams.sum(axis=(1, 2))", "total = masks.sum(axis=(1, 2))")],
            False,
        ),
        (
            "q3_attention",
            "imports the package's energy_share instead of writing it",
            [
                (
                    "def energy_share(cams, masks):",
                    "from effnet_edu.attention import energy_share\n\n\n"
                    "def _not_mine(cams, masks):",
                )
            ],
            True,
        ),
        (
            "q3_attention",
            "CAM of the true class, not the predicted one",
            [
                (
                    'cams = attention.gradcam(model, images, targets=predicted, layer="head")',
                    'cams = attention.gradcam(model, images, targets=scenes.labels, layer="head")',
                )
            ],
            True,
        ),
        (
            "q3_attention",
            "CAM of the last stage, not the head",
            [
                (
                    'cams = attention.gradcam(model, images, targets=predicted, layer="head")',
                    'cams = attention.gradcam(model, images, targets=predicted, layer="stage7")',
                )
            ],
            True,
        ),
        (
            "q3_attention",
            "scenes at the baseline's resolution for every model",
            [
                (
                    'ee.SyntheticObjects("test", count, model.config.resolution, **DATA_OPTIONS)',
                    'ee.SyntheticObjects("test", count, BASE[2], **DATA_OPTIONS)',
                )
            ],
            True,
        ),
        (
            "q3_attention",
            "images not scaled to [0, 1]",
            [("images = scenes.images.float() / 255", "images = scenes.images.float()")],
            True,
        ),
        (
            "q3_attention",
            "the constant map's level taken as the chance accuracy 1/24",
            [
                (
                    "return float(energy_share(np.ones(masks.shape), masks).mean())",
                    "return 1 / NUM_CLASSES",
                )
            ],
            True,
        ),
    ],
}


# ----------------------------------------------------------------------------- helpers


def _read(path: Path):
    return nbformat.read(path, as_version=4)


def _is_otter_cell(source: str) -> bool:
    return "grader." in source or "import otter" in source


def _check_cell_index(notebook, question: str) -> int:
    for index, cell in enumerate(notebook.cells):
        if cell.cell_type == "code" and f'grader.check("{question}")' in cell.source:
            return index
    raise AssertionError(f"no grader.check cell for {question}")


def _execute(cells, namespace: dict) -> list[str]:
    """Run code cells in `namespace` as otter does: errors are recorded, the run goes on."""
    import matplotlib.pyplot as plt

    errors = []
    for cell in cells:
        if cell.cell_type != "code" or _is_otter_cell(cell.source):
            continue
        try:
            exec(compile(cell.source, f"<cell {cell.get('id')}>", "exec"), namespace)
        except Exception as error:  # noqa: BLE001 - a student's error, recorded like otter does
            errors.append(f"{type(error).__name__}: {error}")
        finally:
            plt.close("all")
    return errors


def _grade(tests: dict, namespace: dict) -> dict:
    """{question: OKTestFile after running its tests on namespace} (otter's own test class)."""
    from otter.test_files import OKTestFile

    results = {}
    for name, spec in tests.items():
        test_file = OKTestFile.from_spec(copy.deepcopy(spec))
        test_file.run(namespace)
        results[name] = test_file
    return results


def _failures(test_file) -> str:
    return "\n".join(r.message[-1500:] for r in test_file.test_case_results if not r.passed)


# ----------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def build(tmp_path_factory):
    """build(name) -> the folder `otter assign` wrote, with every test run on the solutions."""
    out = tmp_path_factory.mktemp("assignments")
    cache: dict[str, Path | BaseException] = {}

    def get(name: str) -> Path:
        if name not in cache:
            try:
                cache[name] = make_assignments.build_one(MASTERS[name], out, run_tests=True)
            except BaseException as error:  # keep the error: do not rebuild for every test
                cache[name] = error
        if isinstance(cache[name], BaseException):
            raise cache[name]
        return cache[name]

    return get


@pytest.fixture(scope="module")
def solved(build):
    """solved(name) -> (autograder notebook, tests, namespace after running it in-process)."""
    cache: dict[str, tuple] = {}

    def get(name: str):
        if name not in cache:
            notebook = _read(build(name) / "autograder" / f"{name}.ipynb")
            namespace = {"__name__": "__main__"}
            errors = _execute(notebook.cells, namespace)
            cache[name] = (notebook, notebook.metadata["otter"]["tests"], namespace, errors)
        return cache[name]

    return get


@pytest.fixture(autouse=True)
def _headless_plots(monkeypatch):
    monkeypatch.setenv("MPLBACKEND", "Agg")
    monkeypatch.setenv("TQDM_DISABLE", "1")


# ----------------------------------------------------------------------------- the masters


@pytest.mark.parametrize("name", NAMES)
def test_master_is_executed_in_order_with_true_test_outputs(name):
    notebook = _read(MASTERS[name])
    code = [c for c in notebook.cells if c.cell_type == "code"]
    assert [c.execution_count for c in code] == list(range(1, len(code) + 1)), (
        f"{name}: re-run the master top to bottom in a clean kernel and save it with outputs"
    )
    assert not [o for c in code for o in c.outputs if o.output_type == "error"]
    in_tests = False
    test_cells = 0
    for cell in notebook.cells:
        if cell.cell_type == "raw" and re.match(r"#\s*BEGIN TESTS", cell.source.strip()):
            in_tests = True
        elif cell.cell_type == "raw" and re.match(r"#\s*END TESTS", cell.source.strip()):
            in_tests = False
        elif in_tests:
            test_cells += 1
            shown = [
                o["data"]["text/plain"] for o in cell.outputs if o.output_type == "execute_result"
            ]
            assert shown == ["True"], (
                f"{name}: a test cell must end in an expression that shows True (otter compares "
                f"the student's output with the master's): {cell.source[:200]!r} shows {shown}"
            )
    assert test_cells > 0


@pytest.mark.parametrize("name", NAMES)
def test_solutions_pass_every_test_in_otter(build, name):
    # build_one runs otter assign with run_tests: it raises unless the autograder notebook scores
    # full marks on every public and hidden test.
    result = build(name)
    assert (result / "student" / f"{name}.ipynb").is_file()
    assert (result / "student" / "effnet_edu" / "__init__.py").is_file()
    with zipfile.ZipFile(result / "autograder" / f"{name}-autograder.zip") as archive:
        names = set(archive.namelist())
    assert {
        "run_autograder",
        "setup.sh",
        "environment.yml",
        "otter_config.json",
        "files/effnet_edu/__init__.py",
        "files/effnet_edu/attention.py",
    } <= names
    assert any(n.startswith("tests/") for n in names)


@pytest.mark.parametrize("name", NAMES)
def test_every_question_has_public_and_hidden_tests(build, name):
    autograder = _read(build(name) / "autograder" / f"{name}.ipynb").metadata["otter"]["tests"]
    student = _read(build(name) / "student" / f"{name}.ipynb").metadata["otter"]["tests"]
    assert autograder and set(student) == set(autograder)
    for question, spec in autograder.items():
        cases = spec["suites"][0]["cases"]
        public = [c["code"] for c in cases if not c["hidden"]]
        assert public and len(public) < len(cases), f"{question}: needs public and hidden tests"
        assert [c["code"] for c in student[question]["suites"][0]["cases"]] == public, (
            f"{question}: the student version must hold exactly the public tests"
        )


@pytest.mark.parametrize("name", NAMES)
def test_in_process_run_of_the_solutions_passes(solved, name):
    notebook, tests, namespace, errors = solved(name)
    assert not errors, f"{name}: cells raised {errors}"
    for question, result in _grade(tests, namespace).items():
        assert result.passed_all, f"{name} {question}:\n{_failures(result)}"


# ----------------------------------------------------------------------------- student versions


def _solution_text(master) -> list[str]:
    """Lines of the master that only a solution contains (long enough to be distinctive)."""
    inside, lines = False, []
    for cell in master.cells:
        if cell.cell_type == "raw" and re.match(r"#\s*BEGIN SOLUTION", cell.source.strip()):
            inside = True
            continue
        if cell.cell_type == "raw" and re.match(r"#\s*END SOLUTION", cell.source.strip()):
            inside = False
            continue
        within = False
        for line in cell.source.splitlines():
            marker = line.strip()
            if marker.startswith("# BEGIN SOLUTION"):
                within = True
            elif marker.startswith("# END SOLUTION"):
                within = False
            elif (
                within
                or line.rstrip().endswith("# SOLUTION")
                or (inside and cell.cell_type == "markdown")
            ):
                lines.append(marker.removesuffix("# SOLUTION").strip())
    return [line for line in lines if len(line) >= 16]


@pytest.mark.parametrize("name", NAMES)
def test_student_version_has_no_solutions_or_hidden_tests(build, name):
    master = _read(MASTERS[name])
    student_file = build(name) / "student" / f"{name}.ipynb"
    student = _read(student_file)
    text = "\n".join(c.source for c in student.cells)
    solution = _solution_text(master)
    assert len(solution) >= 5, "the solution-line detector found almost nothing: is it broken?"
    student_lines = {line.strip() for line in text.splitlines()}
    leaked = [line for line in solution if line in student_lines]
    assert not leaked, f"{name}: solution lines in the student notebook: {leaked[:5]}"
    raw = student_file.read_text()
    for spec in _read(build(name) / "autograder" / f"{name}.ipynb").metadata.otter.tests.values():
        for case in spec["suites"][0]["cases"]:
            if case["hidden"]:
                distinctive = max(case["code"].splitlines(), key=len).removeprefix(">>> ")
                assert distinctive not in raw and distinctive not in text, (
                    f"{name}: a hidden test leaked: {distinctive[:120]}"
                )
    assert "otter_answer_cell" in raw


# Conclusions of A3's written questions (q4-q6) as their model answers state them. Markdown
# outside a solution block reaches the handout as it is (A3's Summary once gave these away).
A3_CONCLUSIONS = (
    "+0.4 points",  # q4(c): ours minus resolution only, mean over the three seeds
    "not separable at 2×",
    "The winner depends on",  # q4(b)
    "10 of the 16",  # q5(b)
    "+22.2",
    "a tie (question 2",
    "0.143",  # q6(a)
    "is 0.33",  # q6(b)
)


def test_a3_handout_states_no_written_answer(build):
    name = "a3_scale_and_look"
    student = _read(build(name) / "student" / f"{name}.ipynb")
    text = "\n".join(c.source for c in student.cells)
    leaked = [phrase for phrase in A3_CONCLUSIONS if phrase in text]
    assert not leaked, f"{name}: the handout states answers of q4-q6: {leaked}"
    master = "\n".join(c.source for c in _read(MASTERS[name]).cells)
    assert all(phrase in master for phrase in A3_CONCLUSIONS), "update A3_CONCLUSIONS"


def test_a3_budget_table_compares_as_notebook_03_does():
    """A3's budget table sets each family's mean against the baseline's mean over all its seeds
    (four at 20 and 40 epochs), as notebook 03 does: these are the differences its check cell
    asserts (final numbers), and the model answer of q5 quotes the texture counts printed."""
    cells = _read(MASTERS["a3_scale_and_look"]).cells
    out = "\n".join(o.get("text", "") for c in cells if c.cell_type == "code" for o in c.outputs)
    table = out[out.index("\n5-epoch schedule:\n") :]  # the budget table's lines

    def block(epochs):  # the lines under "<epochs>-epoch schedule:"
        return table.split(f"\n{epochs}-epoch schedule:\n")[1].split("-epoch schedule:\n")[0]

    for epochs, depth, resolution in ((20, "-2.5", "+22.2"), (40, "+2.5", "+8.3")):
        block_ = block(epochs)
        assert "mean minus the baseline's mean (4 seeds)" in block_, block_
        assert f"depth only {depth}," in block_ and f"resolution only {resolution}," in block_
    answers = "\n".join(c.source for c in cells if c.cell_type == "markdown")
    for epochs, learnt in ((20, 3), (40, 10)):
        assert f"learnt the texture (>= 98 %): {learnt} of 16 models" in block(epochs)
        assert f"{learnt} of the\n16 have" in answers or f"{learnt} of the 16 have" in answers


@pytest.mark.parametrize("name", NAMES)
def test_student_version_fails_every_question(build, name):
    student = _read(build(name) / "student" / f"{name}.ipynb")
    tests = _read(build(name) / "autograder" / f"{name}.ipynb").metadata["otter"]["tests"]
    namespace = {"__name__": "__main__"}
    _execute(student.cells, namespace)
    for question, result in _grade(tests, namespace).items():
        passed = [r.test_case.name for r in result.test_case_results if r.passed]
        assert not passed, f"{name} {question}: the stub passes {passed} as handed out"


@pytest.mark.parametrize("name", NAMES)
def test_solutions_run_without_errors_in_the_handout_folder(build, tmp_path, name):
    """The solutions, executed in a kernel inside a copy of the student folder: with the handout's
    package (graded names stubbed) and data only, every cell runs. (otter's grading records a
    cell's error and goes on, so a broken cell that no test reads would pass unnoticed.)"""
    import shutil

    import nbclient

    folder = tmp_path / "student"
    shutil.copytree(build(name) / "student", folder)
    notebook = _read(build(name) / "autograder" / f"{name}.ipynb")
    notebook.cells = [c for c in notebook.cells if not _is_otter_cell(c.source)]
    client = nbclient.NotebookClient(
        notebook, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(folder)}}
    )
    client.execute()  # raises CellExecutionError at the first cell that fails


def test_student_version_scores_zero_with_otter_run(build, tmp_path):
    """A real `otter run` with the zip that goes to Gradescope (effnet_edu travels inside it)."""
    from otter.api import grade_submission

    name = "a1_scaling_rules"
    result = build(name)
    submission = tmp_path / f"{name}.ipynb"
    submission.write_bytes((result / "student" / f"{name}.ipynb").read_bytes())
    cwd = os.getcwd()
    try:
        grades = grade_submission(
            str(submission), str(result / "autograder" / f"{name}-autograder.zip"), quiet=True
        )
    finally:
        os.chdir(cwd)
    tests = _read(result / "autograder" / f"{name}.ipynb").metadata["otter"]["tests"]
    assert grades.possible == sum(spec["points"] for spec in tests.values())
    assert grades.total == 0


# ----------------------------------------------------------------------------- wrong answers


def _mutant_cases():
    for name, mutants in MUTANTS.items():
        for question, mistake, replacements, public_passes in mutants:
            yield pytest.param(
                name,
                question,
                replacements,
                public_passes,
                id=f"{name}-{question}-{mistake.replace(' ', '_')}",
            )


def test_every_question_has_mutants():
    for name in NAMES:
        master = _read(MASTERS[name])
        questions = {q for q, *_ in MUTANTS.get(name, [])}
        autograded = set()
        for cell in master.cells:
            found = re.search(r"#\s*BEGIN QUESTION\s*\nname:\s*(\S+)", cell.source)
            if cell.cell_type == "raw" and found and "manual: true" not in cell.source:
                autograded.add(found.group(1))
        assert autograded and autograded == questions, (
            f"{name}: autograded questions {sorted(autograded)}, mutants for {sorted(questions)}"
        )


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")  # 0 / 0 mutants
@pytest.mark.parametrize(
    ("name", "question", "replacements", "public_passes"), list(_mutant_cases())
)
def test_plausible_wrong_answer_fails_a_hidden_test(
    solved, name, question, replacements, public_passes
):
    notebook, tests, solved_namespace, errors = solved(name)
    assert not errors
    cells = copy.deepcopy(notebook.cells)
    first = None
    for old, new in replacements:
        where = [i for i, c in enumerate(cells) if c.cell_type == "code" and old in c.source]
        assert len(where) == 1 and cells[where[0]].source.count(old) == 1, (
            f"the mutant's text {old!r} must occur exactly once in the solutions"
        )
        cells[where[0]].source = cells[where[0]].source.replace(old, new)
        first = where[0] if first is None else min(first, where[0])
    check = _check_cell_index(notebook, question)
    assert first < check, "the mutated cell must belong to the question"
    # Re-run from the mutated cell to the question's check on top of the solved state: what the
    # earlier cells made (A3's stored rows and loaded models) stays, as the tests need.
    namespace = dict(solved_namespace)
    _execute(cells[first:check], namespace)
    result = _grade({question: tests[question]}, namespace)[question]
    outcomes = [(r.test_case.hidden, r.passed) for r in result.test_case_results]
    assert any(hidden and not passed for hidden, passed in outcomes), (
        f"no hidden test of {question} catches this mistake: {outcomes}"
    )
    public = all(passed for hidden, passed in outcomes if not hidden)
    assert public == public_passes, (
        f"expected the public tests to {'pass' if public_passes else 'fail'}: {outcomes}"
    )


# ----------------------------------------------------------------------------- the build


@pytest.mark.parametrize("name", NAMES)
def test_generation_is_deterministic(build, tmp_path, name):
    first = build(name)
    second = make_assignments.build_one(MASTERS[name], tmp_path, run_tests=False)
    files = sorted(p.relative_to(first) for p in first.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(second) for p in second.rglob("*") if p.is_file())
    different = [str(p) for p in files if (first / p).read_bytes() != (second / p).read_bytes()]
    assert not different, f"{name}: files differ between two builds: {different}"


def test_masters_and_build_are_not_collected_by_nbval(pytestconfig):
    testpaths = pytestconfig.getini("testpaths")
    assert testpaths, "pyproject.toml's [tool.pytest.ini_options] should name the testpaths"
    build_dir = make_assignments.DEFAULT_OUT
    assert not any(build_dir.is_relative_to(ROOT / p) for p in testpaths), (
        f"the build folder {build_dir} must lie outside pytest's testpaths {testpaths}"
    )
    assert "build/" in (ROOT / ".gitignore").read_text().split(), "build/ must not be committed"
    collected = subprocess.run(
        [sys.executable, "-m", "pytest", "--nbval", "--collect-only", "-q", str(ASSIGNMENTS)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert collected.returncode == 5, (  # 5: "no tests were collected"
        f"pytest --nbval collects from {ASSIGNMENTS}:\n{collected.stdout[-2000:]}"
    )


# ----------------------------------------------------------------------------- the handout's code


def _graded_nodes(package: Path, name: str) -> dict:
    """{graded name: its ast node} in `package` (the repository's or a student's copy)."""
    import ast

    nodes = {}
    for module, names in make_assignments.GRADED[name].items():
        tree = ast.parse((package / module).read_text())
        nodes |= {n.name: n for n in tree.body if getattr(n, "name", None) in names}
    return nodes


@pytest.mark.parametrize("name", NAMES)
def test_student_package_holds_none_of_the_graded_code(build, name):
    import ast

    student = build(name) / "student" / "effnet_edu"
    originals, stubs = _graded_nodes(make_assignments.PACKAGE, name), _graded_nodes(student, name)
    assert (
        set(stubs)
        == set(originals)
        == {n for v in make_assignments.GRADED[name].values() for n in v}
    )
    for stub in stubs.values():
        code = ast.unparse(stub)
        assert "raise NotImplementedError" in code and len(code.splitlines()) <= 6, code
        assert f"{name}.ipynb" in code  # the message says where the student writes it
    # No line of a graded body (long enough to be distinctive) is anywhere in the student's copy.
    text = "\n".join(p.read_text() for p in student.rglob("*.py"))
    present = {line.strip() for line in text.splitlines()}
    source = {m: (make_assignments.PACKAGE / m).read_text() for m in make_assignments.GRADED[name]}
    for graded, node in originals.items():
        module = next(m for m, names in make_assignments.GRADED[name].items() if graded in names)
        body = ast.get_source_segment(source[module], node).splitlines()[1:]
        lines = [line.strip() for line in body if len(line.strip()) >= 25]
        lines = [line for line in lines if not line.startswith(('"""', "#"))]
        elsewhere = source[module].replace(ast.get_source_segment(source[module], node), "")
        others = {x.strip() for m in make_assignments.package_files() for x in (
            elsewhere if m.name == module else m.read_text()).splitlines()}  # fmt: skip
        lines = [line for line in lines if line not in others]  # only this body's own lines
        assert lines, f"{graded}: nothing distinctive to look for"
        leaked = [line for line in lines if line in present]
        assert not leaked, f"{name}: {graded}'s code is in the handout: {leaked[:3]}"
    # The rest of the package still imports and works; each stub says what to write, and where.
    calls = [(m[:-3], n) for m, names in make_assignments.GRADED[name].items() for n in names]
    script = "import effnet_edu, importlib\n" + "".join(
        f"try:\n    importlib.import_module('effnet_edu.{module}').{graded}(1, 2, 3)\n"
        "except NotImplementedError as e:\n    print(e)\n"
        for module, graded in calls
    )
    run = subprocess.run(
        [sys.executable, "-c", script], cwd=student.parent, capture_output=True, text=True
    )
    assert run.returncode == 0, run.stderr[-2000:]
    said = run.stdout.splitlines()
    for (module, graded), message in zip(calls, said, strict=True):
        hint = make_assignments.GRADED[name][f"{module}.py"][graded]
        assert message == (
            f"effnet_edu's {graded} is left out of the handout: you write {hint} "
            f"yourself, in {name}.ipynb"
        ), message


def test_a2_passes_a_correct_solution_with_its_submodules_in_another_order(solved):
    notebook, tests, solved_namespace, errors = solved("a2_build_mbconv")
    # Declare the submodules in reverse order: SE's reduce/expand, MBConv's expand ... project.
    orders = {
        "class SqueezeExcitation(": ("self.reduce =", "self.act =", "self.expand ="),
        "class MBConv(": ("self.expand =", "self.depthwise =", "self.se =", "self.project ="),
    }
    cells = copy.deepcopy(notebook.cells)
    for header, starts in orders.items():
        where = [c for c in cells if c.cell_type == "code" and c.source.startswith(header)]
        assert len(where) == 1, f"no single solution cell starts with {header!r}"
        lines = where[0].source.splitlines(keepends=True)
        at = [i for i, line in enumerate(lines) if line.strip().startswith(starts)]
        assert len(at) == len(starts) and at == list(range(at[0], at[0] + len(at))), at
        lines[at[0] : at[-1] + 1] = lines[at[0] : at[-1] + 1][::-1]
        where[0].source = "".join(lines)
    namespace = {"__name__": "__main__"}
    assert not _execute(cells, namespace)
    assert list(namespace["MBConv"](16, 24, 6, 3, 2).state_dict())[0].startswith("project.")
    for question, result in _grade(tests, namespace).items():
        assert result.passed_all, (
            f"{question} fails a correct, reordered solution:\n{_failures(result)}"
        )


class _ForwardRecorder:
    """Records, for every module call, whether CPU autocast was on, the output's dtype, the
    number of threads and the float32 matmul precision: what a grading machine could change."""

    def __init__(self):
        self.calls: list[tuple[str, bool, str, int, str]] = []

    def __call__(self, module, inputs, output):
        import torch

        dtype = output.dtype if isinstance(output, torch.Tensor) else None
        self.calls.append(
            (
                type(module).__name__,
                torch.is_autocast_enabled("cpu"),
                str(dtype),
                torch.get_num_threads(),
                torch.get_float32_matmul_precision(),
            )
        )

    def __enter__(self):
        import torch

        self.handle = torch.nn.modules.module.register_module_forward_hook(self)
        return self

    def __exit__(self, *exc):
        self.handle.remove()


def _run_and_grade(notebook, tests) -> tuple[dict, str, list]:
    """Run the notebook from the start and grade it: (scores, everything it printed, module
    calls recorded)."""
    import contextlib
    import io

    namespace, printed = {"__name__": "__main__"}, io.StringIO()
    with _ForwardRecorder() as recorder, contextlib.redirect_stdout(printed):
        errors = _execute(notebook.cells, namespace)
        results = _grade(tests, namespace)
    assert not errors, errors
    scores = {q: [c.passed for c in r.test_case_results] for q, r in results.items()}
    return scores, printed.getvalue(), recorder.calls


def test_the_forward_recorder_sees_autocast_and_threads():
    """The recorder behind the next test can fail: it sees bf16 autocast and the thread count."""
    import torch

    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        with _ForwardRecorder() as recorder, torch.autocast("cpu", dtype=torch.bfloat16):
            torch.nn.Linear(4, 4)(torch.ones(2, 4))
    finally:
        torch.set_num_threads(threads)
    assert recorder.calls == [("Linear", True, "torch.bfloat16", 2, "highest")]


@pytest.mark.parametrize("name", NAMES)
def test_grading_is_the_same_with_one_or_two_threads_and_bf16_forced_on_or_off(
    solved, monkeypatch, name
):
    """The master and its tests are run again from the start, as a grading machine would: on one
    thread; on two (the notebook's own `torch.set_num_threads(1)` made a no-op, so its
    computations really run on two); and with the package's `amp="auto"` forced to bf16, as on a
    CPU with native bf16 (AVX512-BF16 or AMX). Every module call in the notebook and its tests
    ran in fp32 (outputs float32, no autocast, matmul precision "highest") on the threads chosen;
    the scores are full, and everything the notebook prints is the same in the three runs."""
    import torch

    import effnet_edu.training as training

    notebook, tests, _, errors = solved(name)
    assert not errors
    threads, runs, set_threads = torch.get_num_threads(), {}, torch.set_num_threads
    monkeypatch.setattr(torch, "set_num_threads", lambda count: None)
    try:
        for count, native_bf16 in ((1, False), (2, False), (1, True)):
            monkeypatch.setattr(training, "cpu_supports_bf16", lambda native=native_bf16: native)
            set_threads(count)
            scores, printed, calls = _run_and_grade(notebook, tests)
            assert all(all(v) for v in scores.values()), (count, native_bf16, scores)
            assert calls, "the notebook and its tests call modules: the recorder sees them"
            seen = {call[1:] for call in calls}
            assert {(a, n, m) for a, _, n, m in seen} <= {(False, count, "highest")}, seen
            assert {d for _, d, _, _ in seen} <= {"torch.float32", "None"}, seen
            runs[(count, native_bf16)] = (scores, printed)
    finally:
        set_threads(threads)
    (first, printed), *others = runs.values()
    for key, (scores, text) in zip(list(runs)[1:], others, strict=True):
        assert scores == first, (key, scores)
        assert text == printed, (
            f"{name} prints other numbers with {key}: {_first_difference(printed, text)}"
        )


def _first_difference(a: str, b: str) -> str:
    lines = [(x, y) for x, y in zip(a.splitlines(), b.splitlines(), strict=False) if x != y]
    return repr(lines[0]) if lines else f"lengths {len(a)} and {len(b)}"


def test_a3_grades_the_same_with_generic_cpu_kernels(build, tmp_path):
    """A3 again, in a fresh process whose PyTorch is held to its generic kernels (ATen without
    vector instructions, oneDNN at SSE4.1), as on an old or different CPU: full scores, and
    everything it prints is the same as with this machine's own kernels."""
    name = "a3_scale_and_look"
    notebook = build(name) / "autograder" / f"{name}.ipynb"
    script = (
        "import json, sys\n"
        f"sys.path.insert(0, {str(Path(__file__).parent)!r})\n"
        "import nbformat, test_assignments as t\n"
        f"nb = nbformat.read({str(notebook)!r}, as_version=4)\n"
        "scores, printed, calls = t._run_and_grade(nb, nb.metadata['otter']['tests'])\n"
        "import torch\n"
        "capability = torch.backends.cpu.get_cpu_capability()\n"
        "sys.stdout.write(json.dumps({'scores': scores, 'printed': printed, 'cpu': capability}))\n"
    )
    results = {}
    for kernels, env in (
        ("native", {}),
        ("generic", {"ATEN_CPU_CAPABILITY": "default", "ONEDNN_MAX_CPU_ISA": "SSE41"}),
    ):
        run = subprocess.run(
            [sys.executable, "-c", script],
            cwd=ASSIGNMENTS,
            capture_output=True,
            text=True,
            env={**os.environ, "MPLBACKEND": "Agg", "TQDM_DISABLE": "1", **env},
        )
        assert run.returncode == 0, run.stderr[-3000:]
        results[kernels] = json.loads(run.stdout)
    assert results["generic"]["cpu"] == "DEFAULT", results["generic"]["cpu"]  # the env took hold
    assert all(all(v) for v in results["generic"]["scores"].values()), results["generic"]["scores"]
    assert results["generic"]["scores"] == results["native"]["scores"]
    native, generic = results["native"]["printed"], results["generic"]["printed"]
    assert native == generic, _first_difference(native, generic)
