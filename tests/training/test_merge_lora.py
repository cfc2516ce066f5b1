"""python -m training.merge_lora: a loadable folder in the original layout, user errors."""
import json
import os

import pytest
import torch
from safetensors.torch import load_file, save_file

from models.model_dir import find_missing_model_files
from models.tiny import build_tiny_pipeline
from training.merge_lora import main
from training.trainer.lora_merge import merge_lora_state


@pytest.fixture
def fake_model_dir(tmp_path):
    """The original folder layout with the tiny DiT split over two shards and dummy T5/VAE/tokenizer files."""
    folder = tmp_path / "Wan2.2-TI2V-tiny"
    (folder / "google" / "umt5-xxl").mkdir(parents=True)
    state = build_tiny_pipeline(0).dit.state_dict()
    keys = sorted(state)
    shards = {"diffusion_pytorch_model-00001-of-00002.safetensors": keys[: len(keys) // 2],
              "diffusion_pytorch_model-00002-of-00002.safetensors": keys[len(keys) // 2:]}
    for name, shard_keys in shards.items():
        save_file({k: state[k].to(torch.bfloat16).contiguous() for k in shard_keys}, folder / name,
                  metadata={"format": "pt"})
    index = {"weight_map": {k: name for name, ks in shards.items() for k in ks}}
    (folder / "diffusion_pytorch_model.safetensors.index.json").write_text(json.dumps(index))
    (folder / "models_t5_umt5-xxl-enc-bf16.pth").write_bytes(b"t5" * 100)
    (folder / "Wan2.2_VAE.pth").write_bytes(b"vae" * 100)
    (folder / "google" / "umt5-xxl" / "tokenizer.json").write_text("{}")
    return folder


def test_cli_writes_a_loadable_folder_and_refuses_to_overwrite(fake_model_dir, tmp_path, capsys, random_lora):
    lora = random_lora(build_tiny_pipeline(0).dit)
    save_file(lora, tmp_path / "lora.safetensors")
    out = tmp_path / "merged"
    args = ["--model_dir", str(fake_model_dir), "--lora_path", str(tmp_path / "lora.safetensors"),
            "--alpha", "1.0", "--output_dir", str(out)]
    assert main(args) == 0
    assert find_missing_model_files(str(out)) == []
    assert sorted(os.listdir(out)) == sorted(os.listdir(fake_model_dir) + ["merge_info.json"])
    for name in ("models_t5_umt5-xxl-enc-bf16.pth", "Wan2.2_VAE.pth", "google/umt5-xxl/tokenizer.json",
                 "diffusion_pytorch_model.safetensors.index.json"):
        assert (out / name).read_bytes() == (fake_model_dir / name).read_bytes()

    base, merged = {}, {}
    for shard in sorted(fake_model_dir.glob("diffusion_pytorch_model-*.safetensors")):
        base.update(load_file(shard))
        part = load_file(out / shard.name)
        assert part.keys() == load_file(shard).keys() and all(v.dtype == torch.bfloat16 for v in part.values())
        merged.update(part)
    expected = merge_lora_state(base, lora)
    assert all(torch.equal(merged[k], expected[k]) for k in expected)
    assert sum(not torch.equal(merged[k], base[k]) for k in base) == len(lora) // 2
    assert json.loads((out / "merge_info.json").read_text())["merged_modules"] == len(lora) // 2

    capsys.readouterr()
    assert main(args) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert main(args + ["--overwrite", "--alpha", "0.0"]) == 0  # the last --alpha wins: a no-op merge
    for shard in fake_model_dir.glob("diffusion_pytorch_model-*.safetensors"):
        assert (out / shard.name).read_bytes() == shard.read_bytes()
    assert sorted(os.listdir(out.parent)) == sorted(["Wan2.2-TI2V-tiny", "lora.safetensors", "merged"])


def test_cli_default_output_and_errors(fake_model_dir, tmp_path, monkeypatch, capsys, random_lora):
    lora = {"blocks.9.self_attn.q.lora_A.weight": torch.zeros(4, 64),
            "blocks.9.self_attn.q.lora_B.weight": torch.zeros(64, 4)}
    save_file(lora, tmp_path / "wrong.safetensors")
    monkeypatch.chdir(tmp_path)
    assert main(["--model_dir", str(fake_model_dir), "--lora_path", "wrong.safetensors"]) == 2
    assert "in no DiT shard" in capsys.readouterr().err
    assert not (tmp_path / "outputs" / "merged" / "Wan2.2-TI2V-tiny_merged").exists()
    assert not [p for p in (tmp_path / "outputs" / "merged").iterdir()]  # no temp folder left behind
    save_file(random_lora(build_tiny_pipeline(0).dit), tmp_path / "lora.safetensors")
    assert main(["--model_dir", str(fake_model_dir), "--lora_path", "lora.safetensors"]) == 0
    assert find_missing_model_files(str(tmp_path / "outputs" / "merged" / "Wan2.2-TI2V-tiny_merged")) == []
    assert main(["--model_dir", str(tmp_path / "nope"), "--lora_path", "lora.safetensors"]) == 2
    assert "--model_dir" in capsys.readouterr().err
