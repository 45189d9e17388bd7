"""pytest: the otter-grader master notebooks in this folder are not run by `pytest --nbval`.

A master is not an ordinary notebook: its raw cells (`# BEGIN QUESTION`, ...) are otter's markup,
and its test cells are doctests that only otter runs (A3's also read the scale study's files,
which the build copies next to the handout). tests/test_assignments.py checks the masters
instead, more strictly than nbval would: otter grades each one against all its public and hidden
tests, the stored outputs must come from one clean top-to-bottom run with `True` from every test
cell, the solutions must run without an error in the student folder, and the generated student
versions (written outside notebooks/, to build/assignments/) must fail.
"""

collect_ignore_glob = ["*.ipynb"]
