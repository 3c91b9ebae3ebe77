"""The repository layout on disk and the version policy: plain files, no model loaded."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from app.artifact import ArtifactError, load_artifact
from app.layout import Scanner, VersionPolicy


def put(root: Path, artifact_dir: Path, *where: str) -> Path:
    target = root.joinpath(*where)
    shutil.copytree(artifact_dir, target)
    return target


def test_versions_are_integer_folders_and_a_bare_folder_is_version_1(tmp_path, artifact_dir):
    put(tmp_path, artifact_dir, "parts", "1")
    put(tmp_path, artifact_dir, "parts", "3")
    put(tmp_path, artifact_dir, "mnist")
    for ignored in (("parts", "latest"), ("parts", "0"), (".hidden", "1"), ("a.b", "1")):
        put(tmp_path, artifact_dir, *ignored)
    (tmp_path / "README.md").write_text("not a model")
    (tmp_path / "empty").mkdir()
    found = Scanner(tmp_path).scan()
    assert {name: sorted(versions) for name, versions in found.items()} == {
        "mnist": [1],
        "parts": [1, 3],
    }
    assert found["parts"][3].directory == tmp_path / "parts" / "3"


def test_a_half_copied_version_is_not_present(tmp_path, artifact_dir):
    """model.json declares model.pt's sha256: a short or partial model.pt does not count."""
    version = put(tmp_path, artifact_dir, "parts", "2")
    whole = (version / "model.pt").read_bytes()
    (version / "model.pt").write_bytes(whole[: len(whole) // 2])
    scanner = Scanner(tmp_path)
    assert scanner.scan() == {}
    (version / "model.pt").write_bytes(whole)
    assert sorted(scanner.scan()["parts"]) == [2]
    (version / "model.json").write_text('{"format_version": 1, "na')  # being written
    assert scanner.scan() == {}


def test_the_stamp_changes_when_a_file_is_replaced(tmp_path, artifact_dir):
    version = put(tmp_path, artifact_dir, "parts", "1")
    scanner = Scanner(tmp_path)
    before = scanner.scan()["parts"][1].stamp
    metadata = json.loads((version / "model.json").read_text())
    (version / "model.json").write_text(json.dumps({**metadata, "name": "retrained"}))
    assert scanner.scan()["parts"][1].stamp != before


def test_a_single_artifact_folder_is_always_tried(tmp_path):
    """VAE_MODEL_DIR: so that a broken artifact fails with its own reason."""
    found = Scanner(tmp_path / "mine", single=True).scan()
    assert list(found) == ["mine"] and list(found["mine"]) == [1]


def test_load_refuses_a_model_file_that_is_not_the_declared_one(tmp_path, artifact_dir):
    version = put(tmp_path, artifact_dir, "parts")
    (version / "model.pt").write_bytes(b"another file")
    with pytest.raises(ArtifactError, match="does not match model_sha256"):
        load_artifact(version)


@pytest.mark.parametrize(
    ("policy", "available", "served"),
    [
        ("latest", {1, 2, 3}, {3}),
        ("latest:2", {1, 2, 3}, {2, 3}),
        ("latest:5", {1, 7}, {1, 7}),
        ("all", {1, 2, 3}, {1, 2, 3}),
        ("specific:1,3", {1, 2, 3}, {1, 3}),
        ("specific:4", {1, 2}, set()),
        ("latest", set(), set()),
    ],
)
def test_version_policy_selects_like_tritons(policy, available, served):
    assert VersionPolicy.parse(policy).select(available) == served


@pytest.mark.parametrize("text", ["newest", "latest:0", "latest:x", "specific:", "specific:1,,2"])
def test_bad_policies_are_refused(text):
    with pytest.raises(ValueError, match="latest, latest:N, all or specific"):
        VersionPolicy.parse(text)
