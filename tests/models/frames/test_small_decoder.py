"""models.frames.small_decoder: streaming equals one-shot, constant memory, the Wan frame counts, the folder format,
bad configs refused by name; models.frames.cost: the full-size preset is a few percent of the Wan decoder. CPU."""
import json

import pytest
import torch
from safetensors.torch import save_file

from models.frames.cost import small_decoder_cost, wan_decoder_cost
from models.frames.small_decoder import (
    CONFIG_FILE,
    PRESETS,
    WEIGHTS_FILE,
    SmallDecoder,
    SmallDecoderConfig,
    SmallStreamDecoder,
    decode_video,
    load_small_decoder,
    save_small_decoder,
)

SMALL = SmallDecoderConfig(widths=[16, 8, 8], blocks=[2, 1, 1], patch=4)


@pytest.fixture(scope="module")
def decoder():
    torch.manual_seed(0)
    return SmallDecoder(SMALL).eval()


def latents(frames: int, h: int = 3, w: int = 5, seed: int = 0) -> torch.Tensor:
    return torch.randn(1, 48, frames, h, w, generator=torch.Generator().manual_seed(seed))  # (1, C, F, h, w)


def test_frame_counts_are_the_wan_decoders(decoder):
    video = decode_video(decoder, latents(5))
    assert video.shape == (1, 3, 17, 48, 80)  # 1 + 4 * 4 frames, 16x the 3x5 grid
    assert video.min() >= -1 and video.max() <= 1
    stream = SmallStreamDecoder(decoder)
    assert [stream.push(latents(1, seed=i)).shape[2] for i in range(3)] == [1, 4, 4]


@pytest.mark.parametrize("group", [1, 2, 3])
def test_streaming_equals_one_shot(decoder, group):
    z = latents(9)
    one_shot = decode_video(decoder, z)  # (1, 3, 33, H, W)
    stream = SmallStreamDecoder(decoder)
    parts = [stream.push(z[:, :, :1])] + [stream.push(z[:, :, s:s + group]) for s in range(1, 9, group)]
    streamed = torch.cat(parts, 2)
    assert streamed.shape == one_shot.shape
    torch.testing.assert_close(streamed, one_shot, atol=1e-5, rtol=0)


def test_the_memory_stays_constant_over_a_long_stream(decoder):
    stream = SmallStreamDecoder(decoder)
    stream.push(latents(1))
    after_one = stream.nbytes
    shapes = [tuple(p.shape) for p in stream.state.pasts]
    for i in range(40):
        stream.push(latents(1, seed=i + 1))
    assert stream.nbytes == after_one > 0
    assert [tuple(p.shape) for p in stream.state.pasts] == shapes
    # one (1, 1, C, h, w) frame per memory block: 2 blocks of 16 at 3x5, 1 of 8 at 6x10, 1 of 8 at 12x20, float32
    assert after_one == 4 * (2 * 16 * 15 + 8 * 60 + 8 * 240)


def test_a_later_latent_frame_never_changes_earlier_frames(decoder):
    z = latents(4)
    other = z.clone()
    other[:, :, 3] += 1
    a, b = decode_video(decoder, z), decode_video(decoder, other)
    assert torch.equal(a[:, :, :9], b[:, :, :9])  # frames of latent frames 0..2
    assert not torch.equal(a[:, :, 9:], b[:, :, 9:])


@pytest.mark.parametrize("fields, message", [
    ({"widths": [16, 8], "blocks": [1, 1, 1]}, "one entry per level"),
    ({"widths": [16, 8, 8, 8], "blocks": [1, 1, 1, 1], "patch": 4}, "patch"),
    ({"widths": [], "blocks": []}, "widths"),
    ({"blocks": [1, -1, 1, 1]}, "blocks"),
    ({"z_dim": 0}, "z_dim"),
    ({"patch": True}, "patch"),
])
def test_bad_configs_are_refused_by_name(fields, message):
    with pytest.raises(ValueError, match=message):
        SmallDecoderConfig(**fields)


def test_wrong_latent_channels_are_refused(decoder):
    with pytest.raises(ValueError, match="latents: expected 48 channels"):
        decoder(torch.zeros(1, 16, 1, 3, 5))


def test_folder_round_trip_and_mismatches(tmp_path, decoder):
    save_small_decoder(str(tmp_path), decoder, extra={"report": {"psnr_to_teacher_db": 30.0}})
    data = json.loads((tmp_path / CONFIG_FILE).read_text())
    assert data["format"] == "wanfly-small-decoder" and data["config"]["widths"] == [16, 8, 8]
    loaded = load_small_decoder(str(tmp_path))
    z = latents(3)
    assert torch.equal(decode_video(loaded, z), decode_video(decoder, z))
    # weights of another architecture than the JSON says
    save_file({k: v.contiguous() for k, v in SmallDecoder(PRESETS["toy"]).state_dict().items()},
              str(tmp_path / WEIGHTS_FILE))
    with pytest.raises(ValueError, match="does not match small_decoder.json"):
        load_small_decoder(str(tmp_path))
    data["config"]["depth"] = 3
    (tmp_path / CONFIG_FILE).write_text(json.dumps(data))
    with pytest.raises(ValueError, match=r"unknown field\(s\) \['depth'\]"):
        load_small_decoder(str(tmp_path))
    data["config"].pop("depth")
    data["config"]["patch"] = 8
    (tmp_path / CONFIG_FILE).write_text(json.dumps(data))
    with pytest.raises(ValueError, match="small_decoder.json: config: .*patch"):
        load_small_decoder(str(tmp_path))
    (tmp_path / CONFIG_FILE).write_text(json.dumps({**data, "format": "something-else"}))
    with pytest.raises(ValueError, match="format"):
        load_small_decoder(str(tmp_path))
    with pytest.raises(FileNotFoundError, match=CONFIG_FILE):
        load_small_decoder(str(tmp_path / "missing"))


def test_the_full_preset_costs_under_one_percent_of_the_wan_decoder():
    from diffsynth.models.wan_video_vae import VideoVAE38_
    with torch.device("meta"):
        wan = VideoVAE38_(dim=8, z_dim=48, dec_dim=256)  # the 5B model's decoder widths
    for h, w in ((30, 52), (44, 80)):  # 480x832 and 704x1280
        small, teacher = small_decoder_cost(PRESETS["full"], h, w), wan_decoder_cost(wan, h, w)
        assert small["flops_per_latent_frame"] < 0.01 * teacher["flops_per_latent_frame"]
    assert teacher["params"] == 555_051_580 and small["params"] == 9_209_996
    assert teacher["flops_per_latent_frame"] == 66_352_091_463_680  # 704x1280: 66.4 TFLOP per 4 frames
