"""The original Wan2.2-TI2V-5B layout check: a folder as ``python -m models.fake_model_dir`` writes it (placeholder
files here) passes, and one missing any file is refused by ``from_model_dir`` and ``build_pipeline`` naming exactly
that file, before anything loads."""
from __future__ import annotations

import shutil

import pytest

from models.fake_model_dir import DIT_INDEX, ROLES, layout_files
from models.loading import build_pipeline
from models.model_dir import MODEL_DIR_LAYOUT, check_model_dir, find_missing_model_files
from models.pipeline import WanActionPipeline


def placeholder_folder(root, without: str = "") -> str:
    """Every file of the generator's layout (empty), and its DiT index, except those of role ``without``."""
    for spec in layout_files("bf16"):
        if spec.role == without:
            continue
        path = root / spec.name
        if spec.name.endswith("/"):
            path.mkdir(parents=True)
        else:
            path.write_bytes(b"")
    (root / DIT_INDEX).write_text("{}")  # the index alone is no DiT shard
    return str(root)


def test_the_generators_layout_passes_the_check(tmp_path):
    folder = placeholder_folder(tmp_path)
    assert find_missing_model_files(folder) == []
    check_model_dir(folder)


@pytest.mark.parametrize("role", ROLES)
def test_a_missing_file_is_named(tmp_path, role):
    folder = placeholder_folder(tmp_path, without=role)
    missing = MODEL_DIR_LAYOUT[role]
    assert find_missing_model_files(folder) == [missing]
    for load in (lambda: WanActionPipeline.from_model_dir(folder, device="cpu"),
                 lambda: build_pipeline(model_dir=folder)):
        with pytest.raises(FileNotFoundError) as error:
            load()
        named = str(error.value).split("\n")[0]
        assert named == f"model_dir {folder!r} is missing: {missing}."
        assert "Expected the original Wan2.2-TI2V-5B layout" in str(error.value)


def test_a_tokenizer_file_in_place_of_the_folder_is_missing(tmp_path):
    folder = placeholder_folder(tmp_path, without="tokenizer")
    shutil.rmtree(tmp_path / "google", ignore_errors=True)
    (tmp_path / "google").mkdir()
    (tmp_path / "google" / "umt5-xxl").write_text("not a folder")
    assert find_missing_model_files(folder) == [MODEL_DIR_LAYOUT["tokenizer"]]
