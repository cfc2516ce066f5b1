"""``python -m models.fake_model_dir OUT [--dtype bf16|fp32] [--only dit,vae,text_encoder,tokenizer] [--seed 0]``

Writes a folder in the original Wan2.2-TI2V-5B layout (``models.model_dir.MODEL_DIR_LAYOUT``) with RANDOM weights:
the original file names, keys and shapes (with ``--dtype fp32`` also its dtypes), so diffsynth recognises every file
exactly like the real one (it identifies a file by the MD5 of its sorted ``key:shape`` strings). For checking the
real-weights path (``from_model_dir``, ``python -m server --model_dir``, ``training.train --model_dir``,
``training.merge_lora``) on a machine that cannot download the weights. What it writes:

    diffusion_pytorch_model-0000N-of-00003.safetensors   the DiT (``WAN_5B_DIT``), split at 10 GB of float32 per
                                                         shard as the original, written shard by shard
    diffusion_pytorch_model.safetensors.index.json       the shard index (``weight_map``)
    models_t5_umt5-xxl-enc-bf16.pth                      the umT5-XXL encoder (``WanTextEncoder()``), bfloat16
    Wan2.2_VAE.pth                                       the VAE38 without diffsynth's ``model.`` prefix
    google/umt5-xxl/                                     a SMALL T5 tokenizer (about 250 pieces instead of 256000;
                                                         the umT5 special ids and 300 sentinels; no spiece.model)

``--dtype bf16`` (default, ~22.8 GB) writes every tensor in bfloat16; ``--dtype fp32`` (~34 GB) writes the dtypes
the original ships (DiT and VAE float32, the T5 bfloat16 as its name says). Values are a fixed pattern: a seeded
pool of normal(0, 0.02) samples copied tensor after tensor (fast, finite; nothing like trained weights). Peak memory
is about one DiT shard or the whole T5 (11.4 GB: torch.save writes a dict held in memory, once). The folder is
refused when it is not empty or its disk lacks the space.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import resource
import shutil
import string
import sys
import time
from dataclasses import dataclass
from functools import lru_cache

from .model_dir import MODEL_DIR_LAYOUT, WAN_5B_DIT

ROLES = tuple(MODEL_DIR_LAYOUT)  # dit, text_encoder, vae, tokenizer
# diffsynth 2.1.12's registered MD5 and class for each Wan2.2-TI2V-5B file (its configs/model_configs.py).
REGISTERED = {
    "dit": ("1f5ab7703c6fc803fdded85ff040c316", "diffsynth.models.wan_video_dit.WanModel"),
    "text_encoder": ("9c8818c2cbea55eca56c7b447df170da", "diffsynth.models.wan_video_text_encoder.WanTextEncoder"),
    "vae": ("e1de6c02cdac79f8b739f4d3698cd216", "diffsynth.models.wan_video_vae.WanVideoVAE38"),
}
DTYPES = {  # --dtype -> the dtype of each weight file
    "bf16": {"dit": "bfloat16", "text_encoder": "bfloat16", "vae": "bfloat16"},
    "fp32": {"dit": "float32", "text_encoder": "bfloat16", "vae": "float32"},  # as the original ships them
}
ITEMSIZE = {"bfloat16": 2, "float32": 4}
SHARD_BYTES_FP32 = 10 * 10**9  # the original's shards hold at most 10 GB of float32 (the split is dtype-independent)
DIT_INDEX = "diffusion_pytorch_model.safetensors.index.json"
POOL_SIZE = 2**24 + 43  # not a power of two, so consecutive rows of a weight do not repeat the same values
SPACE_MARGIN = 2**30  # free space kept beyond the weights
# The umT5 tokenizer's special tokens and ids: <pad> 0, </s> 1, <s> 2, <unk> 3, then the pieces, then
# <extra_id_299> ... <extra_id_0>. Every id stays far below the encoder's 256384 embedding rows.
SPECIAL_TOKENS = ("<pad>", "</s>", "<s>", "<unk>")
NUM_SENTINELS = 300
TOKENIZER_WORDS = ("a the of and in on over under through above below drone flies fly flying forward backward left "
                   "right up down turn turns camera aerial view shot city forest river lake mountain mountains "
                   "field fields road bridge building buildings tree trees sky cloud clouds sea beach green blue "
                   "white sunny sunset morning night slowly fast smooth high low").split()


@dataclass(frozen=True)
class FileSpec:
    """One file of the folder: its path in it, role (a ``MODEL_DIR_LAYOUT`` key), dtype and ``(key, shape)``s."""
    name: str
    role: str
    dtype: str = ""
    tensors: tuple = ()

    @property
    def nbytes(self) -> int:
        return sum(math.prod(shape) for _, shape in self.tensors) * ITEMSIZE.get(self.dtype, 0)


@lru_cache(maxsize=None)
def component_tensors(role: str) -> tuple:
    """``((key, shape), ...)`` of a Wan2.2-TI2V-5B file as the original holds it, from diffsynth's own model class
    built on the meta device (no memory, no weights)."""
    import torch
    from diffsynth.models.wan_video_dit import WanModel
    from diffsynth.models.wan_video_text_encoder import WanTextEncoder
    from diffsynth.models.wan_video_vae import WanVideoVAE38

    factories = {"dit": lambda: WanModel(**WAN_5B_DIT), "text_encoder": WanTextEncoder, "vae": WanVideoVAE38}
    if role not in factories:
        raise ValueError(f"role: {role!r} has no weights; expected one of {sorted(factories)}")
    with torch.device("meta"):
        state = factories[role]().state_dict()
    # Wan2.2_VAE.pth holds the inner model's keys; diffsynth's WanVideoVAEStateDictConverter adds "model.".
    prefix = "model." if role == "vae" else ""
    return tuple((key[len(prefix):], tuple(value.shape)) for key, value in state.items() if key.startswith(prefix))


def diffsynth_hash(tensors) -> str:
    """The MD5 diffsynth identifies a file by (``hash_model_file`` after reading the keys and shapes)."""
    from diffsynth.core.loader.file import convert_keys_dict_to_single_str
    keys = {key: list(shape) for key, shape in tensors}
    return hashlib.md5(convert_keys_dict_to_single_str(keys).encode("UTF-8")).hexdigest()


def registered_classes(model_hash: str) -> list[str]:
    """The model classes diffsynth's loader (``ModelPool.auto_load_model``) builds for a file of this hash."""
    from diffsynth.configs import MODEL_CONFIGS
    return [config["model_class"] for config in MODEL_CONFIGS if config["model_hash"] == model_hash]


def split_shards(tensors) -> list[tuple]:
    """The DiT's ``(key, shape)``s in order, cut before a shard would pass 10 GB of float32."""
    shards, current, size = [], [], 0
    for key, shape in tensors:
        nbytes = math.prod(shape) * ITEMSIZE["float32"]
        if current and size + nbytes > SHARD_BYTES_FP32:
            shards.append(tuple(current))
            current, size = [], 0
        current.append((key, shape))
        size += nbytes
    return shards + [tuple(current)]


def layout_files(dtype: str = "bf16", only=ROLES) -> list[FileSpec]:
    """Every file the generator writes for these roles, in writing order (small files first)."""
    if dtype not in DTYPES:
        raise ValueError(f"dtype: unknown {dtype!r}; expected one of {sorted(DTYPES)}")
    bad = sorted(set(only) - set(ROLES))
    if bad or not only:
        raise ValueError(f"only: unknown {bad or 'nothing'}; expected some of {','.join(ROLES)}")
    files = []
    if "tokenizer" in only:
        files.append(FileSpec(MODEL_DIR_LAYOUT["tokenizer"], "tokenizer"))
    if "vae" in only:
        files.append(FileSpec(MODEL_DIR_LAYOUT["vae"], "vae", DTYPES[dtype]["vae"], component_tensors("vae")))
    if "dit" in only:
        shards = split_shards(component_tensors("dit"))
        files += [FileSpec(f"diffusion_pytorch_model-{i:05d}-of-{len(shards):05d}.safetensors", "dit",
                           DTYPES[dtype]["dit"], shard) for i, shard in enumerate(shards, 1)]
    if "text_encoder" in only:
        files.append(FileSpec(MODEL_DIR_LAYOUT["text_encoder"], "text_encoder", DTYPES[dtype]["text_encoder"],
                              component_tensors("text_encoder")))
    return files


# ---- writing ------------------------------------------------------------------------------------------------
class Filler:
    """Fills tensors from a seeded pool of normal(0, 0.02) samples, continuing where the last tensor stopped:
    a copy runs at memory speed, where drawing 11 G random numbers would take minutes on a few cores."""

    def __init__(self, seed: int = 0):
        import torch
        generator = torch.Generator().manual_seed(seed)
        self.pool = torch.empty(POOL_SIZE).normal_(0.0, 0.02, generator=generator)
        self.pools, self.offset = {}, 0

    def new(self, shape, dtype: str):
        import torch
        tensor = torch.empty(shape, dtype=getattr(torch, dtype))
        if dtype not in self.pools:
            self.pools[dtype] = self.pool.to(tensor.dtype)
        pool = self.pools[dtype]
        flat, done = tensor.view(-1), 0
        while done < flat.numel():
            take = min(flat.numel() - done, POOL_SIZE - self.offset)
            flat[done:done + take].copy_(pool[self.offset:self.offset + take])
            done, self.offset = done + take, (self.offset + take) % POOL_SIZE
        return tensor


def _sync(path: str) -> float:
    """fsync a written file; returns the seconds it took (the part of a write the page cache hides)."""
    started = time.perf_counter()
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    return time.perf_counter() - started


def write_weights(folder: str, spec: FileSpec, filler: Filler) -> dict:
    """One weight file (safetensors or .pth by its name), built tensor by tensor, written under a temporary name
    and renamed into place. Returns the timings."""
    import torch
    from safetensors.torch import save_file

    path = os.path.join(folder, spec.name)
    partial = path + ".partial"
    started = time.perf_counter()
    state = {key: filler.new(shape, spec.dtype) for key, shape in spec.tensors}
    filled = time.perf_counter()
    if spec.name.endswith(".safetensors"):
        save_file(state, partial, metadata={"format": "pt"})
    else:
        torch.save(state, partial)
    written = time.perf_counter()
    del state
    synced = _sync(partial)
    os.replace(partial, path)
    return {"name": spec.name, "role": spec.role, "dtype": spec.dtype, "bytes": os.path.getsize(path),
            "fill_s": round(filled - started, 3), "write_s": round(written - filled, 3), "sync_s": round(synced, 3)}


def write_dit_index(folder: str, shards: list[FileSpec]) -> None:
    weight_map = {key: spec.name for spec in shards for key, _ in spec.tensors}
    index = {"metadata": {"total_size": sum(spec.nbytes for spec in shards)}, "weight_map": weight_map}
    with open(os.path.join(folder, DIT_INDEX), "w") as f:
        json.dump(index, f, indent=2)


def tokenizer_pieces() -> list[tuple[str, float]]:
    """The small vocabulary: the specials, single characters (with and without the word-start mark), some words,
    then the sentinels in the umT5 order (<extra_id_299> first)."""
    chars = string.ascii_letters + string.digits + string.punctuation
    pieces = [(token, 0.0) for token in SPECIAL_TOKENS] + [("\u2581", -2.0)]
    pieces += [(c, -5.0) for c in chars] + [("\u2581" + c, -4.0) for c in chars]
    pieces += [("\u2581" + word, -1.0) for word in TOKENIZER_WORDS]
    return pieces + [(f"<extra_id_{i}>", 0.0) for i in range(NUM_SENTINELS - 1, -1, -1)]


def write_tokenizer(folder: str) -> dict:
    """A SentencePiece-style (Unigram) T5 tokenizer folder that ``AutoTokenizer`` loads offline as the umT5 one:
    tokenizer.json, tokenizer_config.json (``T5Tokenizer``), special_tokens_map.json. JSON written here (not by
    transformers' ``save_pretrained``), in the format of the original folder, so any transformers version reads it."""
    from tokenizers import AddedToken, Tokenizer, decoders, pre_tokenizers, processors
    from tokenizers.models import Unigram

    os.makedirs(folder, exist_ok=True)
    pieces = tokenizer_pieces()
    backend = Tokenizer(Unigram(pieces, unk_id=SPECIAL_TOKENS.index("<unk>"), byte_fallback=False))
    backend.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="always")])
    backend.decoder = decoders.Metaspace(replacement="\u2581", prepend_scheme="always")
    specials = [token for token, _ in pieces if token in SPECIAL_TOKENS or token.startswith("<extra_id_")]
    backend.add_special_tokens([AddedToken(token, special=True, normalized=False) for token in specials])
    eos = SPECIAL_TOKENS.index("</s>")
    backend.post_processor = processors.TemplateProcessing(single=["$A", "</s>"], pair=["$A", "</s>", "$B", "</s>"],
                                                           special_tokens=[("</s>", eos)])
    backend.save(os.path.join(folder, "tokenizer.json"))
    sentinels = [f"<extra_id_{i}>" for i in range(NUM_SENTINELS)]
    names = {"pad_token": "<pad>", "eos_token": "</s>", "bos_token": "<s>", "unk_token": "<unk>"}
    decoder = {str(i): {"content": token, "lstrip": False, "normalized": False, "rstrip": False,
                        "single_word": False, "special": True}
               for i, (token, _) in enumerate(pieces) if token in specials}
    config = {"added_tokens_decoder": decoder, "additional_special_tokens": sentinels, **names, "extra_ids": 300,
              "clean_up_tokenization_spaces": True, "legacy": True, "model_max_length": 10**30,
              "sp_model_kwargs": {}, "spaces_between_special_tokens": False, "tokenizer_class": "T5Tokenizer"}
    for name, data in (("tokenizer_config.json", config),
                       ("special_tokens_map.json", {"additional_special_tokens": sentinels, **names})):
        with open(os.path.join(folder, name), "w") as f:
            json.dump(data, f, indent=2)
    return {"name": MODEL_DIR_LAYOUT["tokenizer"], "role": "tokenizer", "vocabulary": len(pieces)}


def check_recognised(files: list[FileSpec]) -> None:
    """Refuse to write weights the installed diffsynth would not recognise as the Wan2.2-TI2V-5B files."""
    for role in sorted({spec.role for spec in files} - {"tokenizer"}):
        model_hash = diffsynth_hash(component_tensors(role))
        expected_hash, expected_class = REGISTERED[role]
        if model_hash != expected_hash or registered_classes(model_hash) != [expected_class]:
            raise ValueError(f"{role}: the installed diffsynth hashes these keys to {model_hash} "
                             f"({registered_classes(model_hash) or 'unregistered'}), not {expected_hash} "
                             f"({expected_class}); a folder written now would not load")


def write_model_dir(out: str, dtype: str = "bf16", only=ROLES, seed: int = 0, log=print) -> dict:
    """Write the folder (see the module docstring); returns a summary (files, bytes, timings, peak memory)."""
    files = layout_files(dtype, only)
    check_recognised(files)
    return dict(write_files(out, files, seed, log), dtype=dtype, only=list(only))


def write_files(out: str, files: list[FileSpec], seed: int = 0, log=print) -> dict:
    """Write these files (and the DiT index when shards are among them) into ``out``; returns a summary."""
    os.makedirs(out, exist_ok=True)
    started = time.perf_counter()
    filler = Filler(seed) if any(spec.tensors for spec in files) else None
    written = []
    for spec in files:
        if spec.role == "tokenizer":
            written.append(write_tokenizer(os.path.join(out, spec.name)))
            log(f"wrote {spec.name} ({written[-1]['vocabulary']} tokens)")
            continue
        item = write_weights(out, spec, filler)
        written.append(item)
        log(f"wrote {spec.name}: {item['bytes'] / 1e9:.2f} GB {spec.dtype} (fill {item['fill_s']:.1f} s, "
            f"write {item['write_s']:.1f} s, fsync {item['sync_s']:.1f} s)")
    shards = [spec for spec in files if spec.role == "dit"]
    if shards:
        write_dit_index(out, shards)
    weights = [item for item in written if "bytes" in item]
    total = sum(item["bytes"] for item in weights)
    disk_s = sum(item["write_s"] + item["sync_s"] for item in weights)
    return {"out": out, "seed": seed, "files": written, "bytes": total,
            "seconds": round(time.perf_counter() - started, 3), "disk_s": round(disk_s, 3),
            "write_GB_per_s": round(total / 1e9 / disk_s, 3) if disk_s > 0 else None,
            "peak_host_GB": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9, 3)}


def _nearest_existing(path: str) -> str:
    path = os.path.abspath(path)
    while not os.path.exists(path):
        path = os.path.dirname(path)
    return path


def check_out(out: str, needed_bytes: int) -> None:
    """ValueError naming OUT when it is a non-empty folder (or a file) or its disk has too little free space."""
    if os.path.exists(out) and (not os.path.isdir(out) or os.listdir(out)):
        raise ValueError(f"OUT: {out!r} is not an empty folder; refusing to overwrite it (name a new or empty one)")
    free = shutil.disk_usage(_nearest_existing(out)).free
    if free < needed_bytes + SPACE_MARGIN:
        raise ValueError(f"OUT: {out!r} needs {(needed_bytes + SPACE_MARGIN) / 1e9:.1f} GB free "
                         f"({needed_bytes / 1e9:.1f} GB of weights + {SPACE_MARGIN / 1e9:.1f} GB), "
                         f"its disk has {free / 1e9:.1f} GB")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m models.fake_model_dir", description=__doc__.split("\n\n")[1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", metavar="OUT", help="the folder to write (new or empty)")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="bf16",
                        help="bf16: every tensor bfloat16 (~22.8 GB); fp32: the original's dtypes (~34 GB)")
    parser.add_argument("--only", default=",".join(ROLES), help="comma-separated subset of " + ",".join(ROLES))
    parser.add_argument("--seed", type=int, default=0, help="seed of the weights' values")
    parser.add_argument("--report", default=None, help="also write the summary (files, bytes, timings) as JSON here")
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    only = tuple(name.strip() for name in args.only.split(",") if name.strip())
    try:
        files = layout_files(args.dtype, only)
        check_out(args.out, sum(spec.nbytes for spec in files))
    except ValueError as error:
        parser.error(f"--{error}" if str(error).startswith("only") else str(error))
    try:
        summary = write_model_dir(args.out, args.dtype, only, args.seed)
    except ValueError as error:
        print(f"python -m models.fake_model_dir: error: {error}", file=sys.stderr)
        return 1
    if args.report:
        with open(args.report, "w") as f:
            json.dump(summary, f, indent=2)
    rate = f"; disk write {summary['write_GB_per_s']} GB/s (write + fsync)" if summary["write_GB_per_s"] else ""
    print(f"wrote {args.out}: {summary['bytes'] / 1e9:.1f} GB of RANDOM weights in {summary['seconds']:.1f} s{rate}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
