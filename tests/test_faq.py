"""docs/faq.md: every question is answered, and every link lands on a notebook heading.

A link into a notebook ends in the heading's anchor, as JupyterLab makes it: the heading's
rendered text (Markdown syntax removed), every space replaced by "-", case and punctuation kept.
`heading_anchor` implements that rule, and a test checks it against nbconvert, which renders
every heading of every notebook with the same rule (and then URL-encodes it).
"""

import html
import json
import re
from pathlib import Path
from urllib.parse import unquote

import pytest

ROOT = Path(__file__).resolve().parents[1]
FAQ = ROOT / "docs" / "faq.md"
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
COMPANION = ROOT / "notebooks" / "08_questions_people_ask.ipynb"

# The questions of issue 16, item 4: the words that must all appear in one "## " heading.
QUESTIONS = {
    "accuracy and preprocessing": ("pretrained", "accuracy", "resize", "crop", "interpolation"),
    "B1's resolution": ("B1", "1.15", "224"),
    "training memory": ("training memory", "ResNet", "more parameters"),
    "speed": ("slower", "FLOPs"),
    "BatchNorm conventions": ("BatchNorm", "momentum", "epsilon", "TensorFlow", "PyTorch", "0.99",
                              "0.01"),
    "TF same padding": ('"same" padding', "ported weights"),
    "Grad-CAM layer": ("Grad-CAM", "layer", "7 × 7", "224 px"),
    "32 px images": ("32 px", "upsampling", "output stride"),
    "bigger variant": ("bigger variant", "small dataset"),
}  # fmt: skip
LINK = re.compile(r"\[([^\]]+)\]\(([^)\s]+)\)")  # [text](target)
HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*$")


def heading_anchor(heading: str) -> str:
    """JupyterLab's anchor of a Markdown heading's text (without the leading #s)."""
    text = re.sub(r"`([^`]*)`", r"\1", heading)  # code spans: their text
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", text)  # links: their text
    text = re.sub(r"(\*\*|__|\*)(.+?)\1", r"\2", text)  # emphasis: its text
    text = re.sub(r"(?<!\w)_(.+?)_(?!\w)", r"\1", text)  # _emphasis_, not snake_case
    return text.strip().replace(" ", "-")


def markdown_headings(markdown: str) -> list[str]:
    """The text of every ATX heading (# ...), outside fenced code blocks."""
    headings, fenced = [], False
    for line in markdown.splitlines():
        if line.lstrip().startswith(("```", "~~~")):
            fenced = not fenced
        elif not fenced and (match := HEADING.match(line)):
            headings.append(match.group(2))
    return headings


def notebook_markdown(path: Path) -> list[str]:
    cells = json.loads(path.read_text(encoding="utf-8"))["cells"]
    return ["".join(cell["source"]) for cell in cells if cell["cell_type"] == "markdown"]


def notebook_anchors(path: Path) -> set[str]:
    """Anchors of a notebook's headings. Headings with LaTeX are left out: their rendered text
    depends on the math renderer, so they cannot be linked reliably."""
    return {
        heading_anchor(heading)
        for markdown in notebook_markdown(path)
        for heading in markdown_headings(markdown)
        if "$" not in heading
    }


def faq_sections() -> dict[str, str]:
    """FAQ "## " heading -> the text of its section."""
    sections, current = {}, None
    for line in FAQ.read_text(encoding="utf-8").splitlines():
        if line.startswith("## "):
            current = line[3:].strip()
            sections[current] = ""
        elif current is not None:
            sections[current] += line + "\n"
    return sections


def faq_links() -> list[tuple[str, str]]:
    return LINK.findall(FAQ.read_text(encoding="utf-8"))


def test_every_question_of_the_issue_has_an_answer_section():
    sections = faq_sections()
    for question, words in QUESTIONS.items():
        matching = [h for h in sections if all(word in h for word in words)]
        assert len(matching) == 1, (
            f"the question on {question} needs exactly one '## ' heading in docs/faq.md "
            f"containing {words}; found {matching}"
        )
        answer = sections[matching[0]]
        assert len(answer.split()) >= 60, f"the answer to {matching[0]!r} is a stub"
        assert any(".ipynb#" in target for _, target in LINK.findall(answer)), (
            f"the answer to {matching[0]!r} links to no notebook cell"
        )
    unasked = [h for h in sections if not any(all(w in h for w in ws) for ws in QUESTIONS.values())]
    assert not unasked, f"sections that answer none of the issue's questions: {unasked}"


def test_every_relative_link_resolves_to_a_file_and_notebook_heading():
    links = faq_links()
    assert links, "docs/faq.md has no links"
    for text, target in links:
        if re.match(r"^[a-z]+:", target):  # https:, mailto: ...: not checked offline
            continue
        path, _, fragment = target.partition("#")
        assert path, f"[{text}]({target}): link to a notebook heading, not within the FAQ"
        file = (FAQ.parent / path).resolve()
        assert file.is_file(), f"[{text}]({target}): {file} does not exist"
        if file.suffix == ".ipynb":
            assert fragment, f"[{text}]({target}): name the heading (…ipynb#anchor)"
            anchors = notebook_anchors(file)
            assert fragment in anchors, (
                f"[{text}]({target}): no heading with anchor {fragment!r} in {file.name}; "
                f"its anchors: {sorted(anchors)}"
            )


def test_companion_notebook_sections_are_all_linked():
    linked = {unquote(t.partition("#")[2]) for _, t in faq_links() if COMPANION.name in t}
    sections = [
        heading_anchor(h)
        for markdown in notebook_markdown(COMPANION)
        for h in markdown_headings(markdown)
        if h[:1].isdigit() and "Summary" not in h  # the numbered sections, one per question
    ]
    assert sections, f"{COMPANION.name} has no numbered sections"
    assert set(sections) <= linked, f"sections of {COMPANION.name} that the FAQ never links: " + (
        f"{sorted(set(sections) - linked)}"
    )


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda p: p.name)
def test_anchor_rule_agrees_with_nbconvert(notebook):
    markdown2html = pytest.importorskip("nbconvert.filters.markdown").markdown2html
    for markdown in notebook_markdown(notebook):
        ours = [heading_anchor(h) for h in markdown_headings(markdown) if "$" not in h]
        rendered = re.findall(r'<h[1-6] id="([^"]*)"', markdown2html(markdown))
        theirs = [html.unescape(unquote(i)) for i in rendered if "$" not in unquote(i)]
        assert ours == theirs, f"{notebook.name}: our anchors {ours}, nbconvert's {theirs}"


def test_heading_anchor_examples():
    assert heading_anchor("1. Grad-CAM from scratch") == "1.-Grad-CAM-from-scratch"
    assert (
        heading_anchor("3. `channels_last`: the same tensor") == "3.-channels_last:-the-same-tensor"
    )
    assert heading_anchor("Which layer? The head") == "Which-layer?-The-head"
    assert heading_anchor("*Why* invert_ratio, **now**") == "Why-invert_ratio,-now"
