"""The configuration reference: every key of every config model, and the README kept current."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any, Literal, get_args, get_origin

import pytest
from pydantic import BaseModel, Field
from test_cli_config import run_fmops

from fmops.config import PipelineConfig
from fmops.config_reference import BEGIN, END, FIX, ReferenceMarkersError, check, render, update
from fmops.deployment.settings import DeploymentConfig
from fmops.paths import PROJECT_ROOT

STALE_FILE = f"# Title\n\nintro\n\n{BEGIN}\nan old reference\n{END}\n\n## After\n\noutro\n"


def models_of(annotation: Any, suffix: str = "") -> Iterator[tuple[type[BaseModel], str]]:
    """Every model inside an annotation, with ``[]`` per list level above it."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        yield annotation, suffix
        return
    origin, args = get_origin(annotation), get_args(annotation)
    if origin is dict:
        args, suffix = args[1:], suffix + ".*"  # a mapping's values; its keys are strings
    elif origin in (list, tuple, set):
        suffix += "[]"
    for arg in args:
        yield from models_of(arg, suffix)


def reachable(model: type[BaseModel], path: str = "") -> Iterator[tuple[str, type[BaseModel]]]:
    yield path, model
    for name, info in model.model_fields.items():
        key = info.alias or name
        for child, suffix in models_of(info.annotation):
            yield from reachable(child, f"{path}.{key}{suffix}" if path else f"{key}{suffix}")


def sections_by_path(text: str) -> dict[str, tuple[str, str]]:
    """YAML path -> (heading, section text), from the rendered headings."""
    found: dict[str, tuple[str, str]] = {}
    for block in text.split("\n#### ")[1:]:
        heading = block.split("\n", 1)[0]
        paths = re.findall(r"`([^`]+)`", heading) or []
        if heading.split("</a>", 1)[1].startswith("top level"):
            paths.append("")
        for path in paths:
            found[path] = (heading, block)
    return found


def sections_by_model(text: str) -> dict[str, str]:
    """Model name -> section text, from the name closing each heading."""
    found: dict[str, str] = {}
    for block in text.split("\n#### ")[1:]:
        heading = block.split("\n", 1)[0]
        found[heading.rsplit(" (", 1)[1].removesuffix(")")] = block
    return found


def row(block: str, key: str) -> str:
    match = re.search(rf"^\| `{re.escape(key)}` \|.*$", block, re.MULTILINE)
    assert match, f"no row for key {key!r} in:\n{block}"
    return match.group()


@pytest.fixture(scope="module")
def reference() -> str:
    return render()


def test_every_field_of_every_reachable_model_is_in_its_section(reference):
    sections = sections_by_path(reference)
    walked = list(reachable(PipelineConfig))
    assert len(walked) > 20  # the walk itself reaches the nested sections
    for path, model in walked:
        assert path in sections, f"no section for {path or 'the top level'} ({model.__name__})"
        heading, block = sections[path]
        assert f"({model.__name__})" in heading
        for name, info in model.model_fields.items():
            row(block, info.alias or name)
    assert reference.count("\n#### ") == len({m for _, m in walked})  # one section per model


def test_nested_sections_of_sagemaker_evaluation_and_deployment(reference):
    sections = sections_by_path(reference)
    for path in (
        "deployment.traffic",
        "deployment.alarms",
        "evaluation.scenarios[]",
        "evaluation.gate.bounds[]",
        "evaluation.gate.champion",
        "sagemaker.endpoint.scaling",
        "sagemaker.kms",
        "sagemaker.evaluation_image",
        "candidates[].lora",
        "data.checks.schema",
    ):
        assert path in sections, path


def test_descriptions_docstrings_types_and_defaults(reference):
    sections = sections_by_path(reference)
    _, deployment = sections["deployment"]
    approval = row(deployment, "approval")
    assert DeploymentConfig.model_fields["approval"].description in approval
    assert '"auto" \\| "manual"' in approval
    assert '`"manual"`' in approval
    assert "| 1024 ≤ int ≤ 65535 | `8090` |" in row(deployment, "port")
    assert "| required |" in row(deployment, "endpoint_name")
    assert "[AlarmSettings](#config-alarmsettings) | its defaults |" in row(deployment, "alarms")
    # the first paragraph of the model's docstring, on one line
    assert "fmops_deploy: the endpoint, approval, smoke test" in deployment

    _, top = sections[""]
    assert "list[[Candidate](#config-candidate)], ≥ 1 item |" in row(top, "candidates")
    assert "[SageMakerSettings](#config-sagemakersettings) \\| null | `null` |" in row(
        top, "sagemaker"
    )
    _, data = sections["data"]
    assert "int ≥ 1 \\| null | `null` |" in row(data, "samples_per_label")
    assert "0 < float < 0.5 | `0.1` |" in row(data, "validation_fraction")
    # an alias is the YAML key
    row(sections["data.checks"][1], "schema")

    _, evaluation = sections["evaluation"]
    assert '`[{"name": "heldout"}]`' in row(evaluation, "scenarios")  # a default_factory
    families = row(sections["evaluation.scenarios[]"][1], "families")
    assert '`["accuracy", "calibration", "robustness", "fairness"]`' in families
    # a pattern with "|" is escaped inside its code span, so the table keeps four columns
    instance_type = row(sections["training"][1], "instance_type")
    assert "`^(auto\\|ml\\.[a-z0-9]+\\.[a-z0-9]+)$`" in instance_type
    # "<scenario>" would be taken for an HTML tag
    assert "&lt;scenario>.&lt;family>" in row(sections["evaluation.gate.bounds[]"][1], "metric")
    _, image = sections["sagemaker.image"]
    assert image is sections["sagemaker.evaluation_image"][1]
    assert '"transformers_version": "5.3.0"' in row(sections["sagemaker"][1], "image")


def test_every_row_has_four_cells_and_every_link_an_anchor(reference):
    for line in reference.splitlines():
        if line.startswith("| "):
            cells = re.split(r"(?<!\\)\|", line)[1:-1]
            assert len(cells) == 4, line
    anchors = set(re.findall(r'<a id="([^"]+)"></a>', reference))
    links = set(re.findall(r"\]\(#([^)]+)\)", reference))
    assert links and links <= anchors


def test_render_is_deterministic(reference):
    assert render() == reference
    assert reference.endswith("\n") and not reference.endswith("\n\n")


class Leaf(BaseModel):
    """A leaf.

    Not this paragraph."""

    size: Annotated[int, Field(ge=1, le=8, multiple_of=2)] = 2
    pipe: str = Field("a|b", description="a `code|span` and a | bar")


class Cat(BaseModel):
    kind: Literal["cat"]
    lives: int = Field(9, gt=0)


class Dog(BaseModel):
    kind: Literal["dog"]
    tags: list[Annotated[str, Field(max_length=4)]] = Field(default_factory=list, max_length=1)


class Node(BaseModel):
    """A tree of nodes."""

    pet: Annotated[Cat | Dog, Field(discriminator="kind")]
    leaves: dict[str, Leaf] = Field(default_factory=dict)
    children: list[Node] = Field(default_factory=list)


def test_render_follows_unions_mappings_and_recursion():
    text = render(Node)
    headings = [line.removeprefix("#### ") for line in text.splitlines() if line[:5] == "#### "]
    assert headings == [
        '<a id="config-node"></a>top level, `children[]` (Node)',  # recursion: listed once
        '<a id="config-cat"></a>`pet` (Cat)',  # each member of the union
        '<a id="config-dog"></a>`pet` (Dog)',
        '<a id="config-leaf"></a>`leaves.*` (Leaf)',  # a mapping's values
    ]
    sections = sections_by_model(text)
    node = sections["Node"]
    assert "[Cat](#config-cat) \\| [Dog](#config-dog) | required |" in row(node, "pet")
    assert "list[[Node](#config-node)] | `[]` |" in row(node, "children")
    assert "dict[str, [Leaf](#config-leaf)] | `{}` |" in row(node, "leaves")
    assert '| "dog" | required |' in row(sections["Dog"], "kind")
    assert "list[str, ≤ 4 chars], ≤ 1 item | `[]` |" in row(sections["Dog"], "tags")
    assert "| int > 0 | `9` |" in row(sections["Cat"], "lives")
    leaf = sections["Leaf"]
    assert "A leaf." in leaf and "Not this paragraph" not in leaf
    assert "| 1 ≤ int ≤ 8, multiple of 2 | `2` |" in row(leaf, "size")
    assert '`"a\\|b"` | a `code\\|span` and a \\| bar |' in row(leaf, "pipe")


# -- update and check ----------------------------------------------------------------------


def test_update_and_check_between_markers(tmp_path):
    path = tmp_path / "README.md"
    path.write_text(STALE_FILE)
    assert check(path) is False
    assert update(path) is True
    assert check(path) is True
    assert update(path) is False  # already current: the file is not rewritten
    text = path.read_text()
    assert text.startswith("# Title\n\nintro\n\n" + BEGIN + "\n\n")
    assert text.endswith(f"\n{END}\n\n## After\n\noutro\n")
    assert render() in text and "an old reference" not in text


@pytest.mark.parametrize(
    "text",
    [
        "# no markers\n",
        f"{BEGIN}\nonly the beginning\n",
        f"{END}\nreversed\n{BEGIN}\n",
        f"{BEGIN}\n{END}\n{BEGIN}\n{END}\n",
    ],
    ids=["none", "no-end", "reversed", "twice"],
)
def test_missing_or_broken_markers_name_the_fix(tmp_path, text):
    path = tmp_path / "README.md"
    path.write_text(text)
    for action in (check, update):
        with pytest.raises(ReferenceMarkersError) as info:
            action(path)
        message = str(info.value)
        assert BEGIN in message and END in message
        assert f"fmops config reference --write {path}" in message
    assert path.read_text() == text


# -- the command line ----------------------------------------------------------------------


def test_cli_prints_the_reference(tmp_path):
    result = run_fmops("config", "reference", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout == render()


def test_cli_check_write_check(tmp_path):
    path = tmp_path / "README.md"
    path.write_text(STALE_FILE)
    stale = run_fmops("config", "reference", "--check", "README.md", cwd=tmp_path)
    assert stale.returncode == 1, (stale.stdout, stale.stderr)
    assert FIX.format(path="README.md") in stale.stderr
    written = run_fmops("config", "reference", "--write", "README.md", cwd=tmp_path)
    assert written.returncode == 0, written.stderr
    assert "updated" in written.stdout
    current = run_fmops("config", "reference", "--check", "README.md", cwd=tmp_path)
    assert current.returncode == 0, current.stderr


def test_cli_missing_markers_or_file_exits_2(tmp_path):
    (tmp_path / "README.md").write_text("# no markers\n")
    result = run_fmops("config", "reference", "--check", "README.md", cwd=tmp_path)
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert BEGIN in result.stderr and "Traceback" not in result.stderr
    result = run_fmops("config", "reference", "--write", "nope.md", cwd=tmp_path)
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert "nope.md" in result.stderr and "Traceback" not in result.stderr


# -- the README ----------------------------------------------------------------------------


def test_readme_reference_is_current():
    readme: Path = PROJECT_ROOT / "README.md"
    assert check(readme), f"README.md's configuration reference is stale: {FIX.format(path=readme)}"
