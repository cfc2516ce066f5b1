"""``python -m models.fake_model_dir``: the files it would write are recognised by diffsynth exactly like the
original Wan2.2-TI2V-5B files (keys/shapes hashed on the meta device, no big file written), its writer writes
exactly its specs (small stand-ins read back through diffsynth's own file hashing), the tokenizer loads offline,
and every refusal exits 2 naming the option."""
from __future__ import annotations

import fnmatch
import importlib
import json
import os
from collections import namedtuple

import pytest
import torch

from models import fake_model_dir as fake
from models.model_dir import MODEL_DIR_LAYOUT, WAN_5B_DIT, check_model_dir

# diffsynth 2.1.12's registered values for the Wan2.2-TI2V-5B files (issue 21), written out here on purpose: the
# module's own REGISTERED must not be the only witness.
EXPECTED = {
    "dit": ("1f5ab7703c6fc803fdded85ff040c316", "diffsynth.models.wan_video_dit.WanModel"),
    "vae": ("e1de6c02cdac79f8b739f4d3698cd216", "diffsynth.models.wan_video_vae.WanVideoVAE38"),
    "text_encoder": ("9c8818c2cbea55eca56c7b447df170da", "diffsynth.models.wan_video_text_encoder.WanTextEncoder"),
}
UMT5_VOCAB = 256384  # rows of the T5 encoder's token embedding


def written_tensors(role: str, dtype: str = "bf16") -> list:
    """What the generator would write for a role: the union of its files' (key, shape)s (the DiT: every shard)."""
    return [item for spec in fake.layout_files(dtype) if spec.role == role for item in spec.tensors]


@pytest.mark.parametrize("role", sorted(EXPECTED))
def test_each_file_is_recognised_as_the_wan22_ti2v_5b_component(role):
    from diffsynth.configs import MODEL_CONFIGS
    from diffsynth.core.loader.file import hash_state_dict_keys

    tensors = written_tensors(role)
    model_hash, model_class = EXPECTED[role]
    assert fake.diffsynth_hash(tensors) == model_hash
    # the same value through diffsynth's in-memory hashing (meta tensors of those shapes)
    assert hash_state_dict_keys({k: torch.empty(s, device="meta") for k, s in tensors}) == model_hash
    configs = [c for c in MODEL_CONFIGS if c["model_hash"] == model_hash]  # ModelPool.auto_load_model's lookup
    assert [c["model_class"] for c in configs] == [model_class]
    config = configs[0]
    if role == "dit":  # built with the TI2V-5B settings the rest of wanfly uses
        kwargs = {k: list(v) if isinstance(v, tuple) else v for k, v in WAN_5B_DIT.items()}
        assert config["extra_kwargs"] == kwargs
    # the keys diffsynth then loads (after its registered converter) are exactly the class's: a strict load
    names = {key: key for key, _ in tensors}
    if "state_dict_converter" in config:  # the VAE's adds the "model." prefix
        names = _import(config["state_dict_converter"])(names)
    with torch.device("meta"):
        model = _import(model_class)(**config.get("extra_kwargs", {}))
    assert set(names) == set(model.state_dict())


def _import(dotted: str):
    module, name = dotted.rsplit(".", 1)
    return getattr(importlib.import_module(module), name)


def test_the_layout_has_the_original_names_shards_and_sizes():
    files = fake.layout_files("bf16")
    names = [spec.name for spec in files]
    shards = [name for name in names if fnmatch.fnmatch(name, MODEL_DIR_LAYOUT["dit"])]
    assert shards == [f"diffusion_pytorch_model-0000{i}-of-00003.safetensors" for i in (1, 2, 3)]
    assert {MODEL_DIR_LAYOUT[r] for r in ("text_encoder", "vae", "tokenizer")} <= set(names)
    assert not fnmatch.fnmatch(fake.DIT_INDEX, MODEL_DIR_LAYOUT["dit"])  # the index is no shard
    for spec in fake.layout_files("fp32"):
        if spec.role == "dit":
            assert spec.nbytes <= 10 * 10**9  # as the original: <= 10 GB of float32 per shard
    sizes = {dtype: sum(spec.nbytes for spec in fake.layout_files(dtype)) / 1e9 for dtype in ("bf16", "fp32")}
    assert round(sizes["bf16"], 1) == 22.8 and round(sizes["fp32"], 1) == 34.2
    dtypes = {dtype: {spec.role: spec.dtype for spec in fake.layout_files(dtype) if spec.dtype}
              for dtype in ("bf16", "fp32")}
    assert dtypes["bf16"] == {"vae": "bfloat16", "dit": "bfloat16", "text_encoder": "bfloat16"}
    assert dtypes["fp32"] == {"vae": "float32", "dit": "float32", "text_encoder": "bfloat16"}
    dit = written_tensors("dit")
    assert len(dit) == 825 and sum(torch.Size(s).numel() for _, s in dit) == 4_999_787_712
    assert dict(written_tensors("text_encoder"))["token_embedding.weight"] == (UMT5_VOCAB, 4096)


Spec = namedtuple("Spec", "dit vae text_encoder")
SMALL = Spec(dit=(("patch_embedding.weight", (8, 4, 1, 2, 2)), ("blocks.0.self_attn.q.weight", (8, 8)),
                  ("blocks.0.self_attn.q.bias", (8,)), ("head.head.weight", (16, 8))),
             vae=(("encoder.conv1.weight", (4, 3, 3, 3, 3)), ("decoder.head.0.gamma", (4, 1, 1, 1))),
             text_encoder=(("token_embedding.weight", (32, 8)), ("blocks.0.attn.q.weight", (8, 8))))


def test_the_writer_writes_exactly_its_specs(tmp_path, monkeypatch):
    """Small stand-ins of every file, read back through diffsynth's own file hashing and loading."""
    from diffsynth.core.loader.file import hash_model_file, load_state_dict
    from safetensors import safe_open

    monkeypatch.setattr(fake, "component_tensors", lambda role: getattr(SMALL, role))
    monkeypatch.setattr(fake, "SHARD_BYTES_FP32", 600)  # the 4 DiT tensors fill 3 shards
    files = fake.layout_files("fp32")
    summary = fake.write_files(str(tmp_path), files, seed=0, log=lambda line: None)
    check_model_dir(str(tmp_path))
    shards = sorted(str(p) for p in tmp_path.glob(MODEL_DIR_LAYOUT["dit"]))
    assert [os.path.basename(s) for s in shards] == [f"diffusion_pytorch_model-0000{i}-of-00003.safetensors"
                                                      for i in (1, 2, 3)]
    for role, paths in (("dit", shards), ("vae", str(tmp_path / MODEL_DIR_LAYOUT["vae"])),
                        ("text_encoder", str(tmp_path / MODEL_DIR_LAYOUT["text_encoder"]))):
        assert hash_model_file(paths) == fake.diffsynth_hash(getattr(SMALL, role))
        state = load_state_dict(paths)
        assert {k: tuple(v.shape) for k, v in state.items()} == dict(getattr(SMALL, role))
        expected = torch.bfloat16 if role == "text_encoder" else torch.float32
        assert {v.dtype for v in state.values()} == {expected}
        values = torch.cat([v.float().flatten() for v in state.values()])
        assert torch.isfinite(values).all() and 0.01 < values.std() < 0.04 and values.abs().max() > 0
    with safe_open(shards[0], "pt") as handle:
        assert handle.metadata() == {"format": "pt"}
    index = json.loads((tmp_path / fake.DIT_INDEX).read_text())
    assert set(index["weight_map"]) == {k for k, _ in SMALL.dit}
    assert {os.path.join(tmp_path, name) for name in index["weight_map"].values()} == set(shards)
    assert index["metadata"]["total_size"] == sum(torch.Size(s).numel() * 4 for _, s in SMALL.dit)
    assert not list(tmp_path.glob("*.partial"))
    assert summary["bytes"] == sum(os.path.getsize(p) for p in (*shards, tmp_path / MODEL_DIR_LAYOUT["vae"],
                                                                 tmp_path / MODEL_DIR_LAYOUT["text_encoder"]))
    fake.write_files(str(tmp_path / "again"), files, seed=0, log=lambda line: None)
    first, again = (load_state_dict(str(folder / MODEL_DIR_LAYOUT["vae"])) for folder in (tmp_path, tmp_path / "again"))
    assert all(torch.equal(first[k], again[k]) for k in first)  # the seed fixes the values


def test_the_tokenizer_loads_offline_as_the_umt5_one(tmp_path, monkeypatch):
    from diffsynth.models.wan_video_text_encoder import HuggingfaceTokenizer
    from transformers import AutoTokenizer

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    folder = tmp_path / MODEL_DIR_LAYOUT["tokenizer"]
    fake.write_tokenizer(str(folder))
    assert sorted(os.listdir(folder)) == ["special_tokens_map.json", "tokenizer.json", "tokenizer_config.json"]
    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    assert type(tokenizer).__name__ in ("T5Tokenizer", "T5TokenizerFast")  # transformers 5 / 4
    assert (tokenizer.pad_token_id, tokenizer.eos_token_id, tokenizer.bos_token_id, tokenizer.unk_token_id) == \
        (0, 1, 2, 3)
    assert tokenizer.convert_tokens_to_ids("<extra_id_0>") == len(tokenizer) - 1
    assert tokenizer.convert_tokens_to_ids("<extra_id_299>") == len(tokenizer) - 300
    wrapper = HuggingfaceTokenizer(name=str(folder), seq_len=512, clean="whitespace")  # what from_pretrained builds
    ids, mask = wrapper("A drone  flies over the forest", return_mask=True, add_special_tokens=True)
    assert ids.shape == mask.shape == (1, 512)
    words = tokenizer.convert_ids_to_tokens(ids[0, :7].tolist())
    assert words == ["\u2581A", "\u2581drone", "\u2581flies", "\u2581over", "\u2581the", "\u2581forest", "</s>"]
    assert int(mask.sum()) == 7 and ids[0, 7:].eq(0).all() and int(ids.max()) < UMT5_VOCAB


def test_only_tokenizer_writes_just_the_tokenizer_and_a_report(tmp_path, capsys):
    out, report = tmp_path / "fake", tmp_path / "report.json"
    assert fake.main([str(out), "--only", "tokenizer", "--report", str(report)]) == 0
    assert os.listdir(out) == ["google"] and (out / MODEL_DIR_LAYOUT["tokenizer"] / "tokenizer.json").is_file()
    summary = json.loads(report.read_text())
    assert summary["only"] == ["tokenizer"] and summary["bytes"] == 0 and summary["files"][0]["role"] == "tokenizer"
    assert "RANDOM weights" in capsys.readouterr().out


@pytest.mark.parametrize("args, message", [
    (["--only", "dit,unet"], "--only: unknown ['unet']"),
    (["--only", ","], "--only: unknown nothing"),
    (["--dtype", "fp16"], "--dtype: invalid choice: 'fp16'"),
])
def test_bad_options_exit_2_naming_the_option(tmp_path, capsys, args, message):
    with pytest.raises(SystemExit) as exit_:
        fake.main([str(tmp_path / "out"), *args])
    assert exit_.value.code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_refuses_a_non_empty_folder(tmp_path, capsys):
    (tmp_path / "keep.txt").write_text("mine")
    with pytest.raises(SystemExit) as exit_:
        fake.main([str(tmp_path), "--only", "tokenizer"])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and "OUT: " in err and "not an empty folder; refusing to overwrite" in err
    assert os.listdir(tmp_path) == ["keep.txt"]


def test_refuses_when_the_disk_is_too_small(tmp_path, capsys, monkeypatch):
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(fake.shutil, "disk_usage", lambda path: usage(10**12, 10**12 - 3 * 10**9, 3 * 10**9))
    monkeypatch.setattr(fake, "component_tensors", lambda role: getattr(SMALL, role) if role != "text_encoder"
                        else (("token_embedding.weight", (UMT5_VOCAB, 4096)),))  # 2.1 GB in bf16
    with pytest.raises(SystemExit) as exit_:
        fake.main([str(tmp_path / "out"), "--only", "text_encoder,tokenizer"])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and "OUT: " in err and "needs 3.2 GB free" in err and "its disk has 3.0 GB" in err
    assert not (tmp_path / "out").exists()
