"""training.trainer.checkpoint: atomic files and checkpoints that survive a kill at any moment."""
import json
import os

import pytest
import torch

from training.trainer import checkpoint as ckpt


def save(root, step, value=1.0):
    return ckpt.save_checkpoint(root, step, {"pipe.action_controller.w": torch.full((2,), value)},
                                {"state": {}, "param_groups": []}, {"last_epoch": step}, [ckpt.capture_rng_state()],
                                {"samples": step})


def test_atomic_write_keeps_the_old_file_when_the_rename_fails(tmp_path, monkeypatch):
    path = str(tmp_path / "a.json")
    ckpt.write_json_atomic(path, {"v": 1})

    def broken_replace(src, dst):
        raise OSError("disk gone")
    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError):
        ckpt.write_json_atomic(path, {"v": 2})
    monkeypatch.undo()
    assert json.loads(open(path).read()) == {"v": 1}
    assert os.listdir(tmp_path) == ["a.json"]  # the temp file is gone


def test_checkpoint_layout_and_round_trip(tmp_path):
    expected = torch.rand(3, generator=torch.Generator().set_state(torch.get_rng_state()))  # the next draw
    path = save(str(tmp_path), 7, 3.0)  # captures the RNG state
    assert os.path.basename(path) == "step-000000007"
    assert sorted(os.listdir(path)) == sorted(ckpt.CHECKPOINT_FILES)
    loaded = ckpt.load_checkpoint(path)
    assert loaded["trainer_state"] == {"samples": 7, "step": 7}
    assert torch.equal(loaded["trainable_full"]["pipe.action_controller.w"], torch.full((2,), 3.0))
    from safetensors.torch import load_file
    assert list(load_file(os.path.join(path, ckpt.TRAINABLE_NAME))) == ["w"]  # the seed's prefix-free keys
    torch.rand(5)
    ckpt.restore_rng_state(loaded["rng_states"][0])
    assert torch.equal(torch.rand(3), expected)


def test_a_write_dying_mid_checkpoint_leaves_the_previous_one(tmp_path, monkeypatch):
    root = str(tmp_path)
    save(root, 2)
    real = ckpt.torch_save_atomic

    def dies(path, obj):
        if path.endswith(ckpt.RNG_NAME):
            raise KeyboardInterrupt  # killed while writing the step-4 checkpoint
        real(path, obj)
    monkeypatch.setattr(ckpt, "torch_save_atomic", dies)
    with pytest.raises(KeyboardInterrupt):
        save(root, 4)
    assert [step for step, _ in ckpt.list_checkpoints(root)] == [2]
    assert ckpt.resolve_resume("latest", root).endswith("step-000000002")
    # A hard kill would also leave the temp folder behind: it is never mistaken for a checkpoint.
    os.makedirs(os.path.join(root, ".step-000000004.tmp-x"))
    (tmp_path / ".step-000000004.tmp-x" / ckpt.TRAINABLE_NAME).write_bytes(b"half")
    assert [step for step, _ in ckpt.list_checkpoints(root)] == [2]
    assert ckpt.clean_temp_dirs(root) == [".step-000000004.tmp-x"]


def test_incomplete_folders_are_not_checkpoints(tmp_path):
    path = save(str(tmp_path), 3)
    os.remove(os.path.join(path, ckpt.OPTIMIZER_NAME))
    assert ckpt.list_checkpoints(str(tmp_path)) == []
    with pytest.raises(ValueError, match="--resume_from: .* not a complete checkpoint"):
        ckpt.resolve_resume(path, str(tmp_path))
    with pytest.raises(ValueError, match="--resume_from: .* is not a folder"):
        ckpt.resolve_resume(str(tmp_path / "nope"), str(tmp_path))
    assert ckpt.resolve_resume("latest", str(tmp_path / "empty")) is None


def test_rotation_and_resaving_a_step(tmp_path):
    root = str(tmp_path)
    for step in (1, 2, 3, 4):
        save(root, step)
    removed = ckpt.rotate_checkpoints(root, 2)
    assert [os.path.basename(p) for p in removed] == ["step-000000001", "step-000000002"]
    assert sorted(os.listdir(root)) == ["step-000000003", "step-000000004"]
    save(root, 4, 9.0)  # re-saving a step replaces it whole
    assert torch.equal(ckpt.load_checkpoint(os.path.join(root, "step-000000004"))["trainable_full"]
                       ["pipe.action_controller.w"], torch.full((2,), 9.0))
    assert sorted(os.listdir(root)) == ["step-000000003", "step-000000004"]
