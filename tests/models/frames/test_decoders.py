"""models.frames.decoders: the small decoder behind every decode path of a pipeline (one-shot calls, streamed chunk
decodes, streams), the choice refused by name when impossible. Tiny preset on CPU."""
import numpy as np
import pytest
import torch

from models.action_format import constant_actions
from models.frames.small_decoder import SmallDecoder, SmallDecoderConfig, decode_video
from models.loading import build_pipeline
from models.media import video_to_frames

PROMPT = "a drone flies over a green field"


@pytest.fixture(scope="module")
def pipe():
    pipe = build_pipeline(preset="tiny", controller_overrides={"initial_scale": 1.0})
    torch.manual_seed(0)
    pipe.use_decoder("small", SmallDecoder(SmallDecoderConfig(widths=[16, 8, 8], blocks=[1, 1, 0], patch=4)))
    return pipe


def kwargs(first):
    return dict(prompt=PROMPT, input_image=first, height=64, width=64, num_frames=9, num_inference_steps=2, seed=1,
                cfg_scale=1.0, actions=np.stack([constant_actions(1, {"Forward": 0.01})[0]] * 2),
                output_type="floatpoint", tiled=False, progress_bar_cmd=lambda it: it)


def test_a_pipeline_call_decodes_with_the_small_decoder(pipe, first):
    video = pipe(**kwargs(first))  # (1, 3, 9, 64, 64)
    latents = pipe.generate_latents(**kwargs(first))  # the capture still wins over the chosen decoder
    assert latents.shape == (1, 48, 3, 4, 4)
    assert "decode" not in vars(pipe.vae)
    assert torch.equal(video, decode_video(pipe.small_decoder, latents))
    parts = list(pipe.stream_decode(latents, group=1))
    assert [p.shape[2] for p in parts] == [1, 4, 4]
    torch.testing.assert_close(torch.cat(parts, 2), video, atol=1e-5, rtol=0)
    pipe.use_decoder("wan")
    try:
        wan = pipe(**kwargs(first))
        assert wan.shape == video.shape and not torch.equal(wan, video)
        assert torch.equal(wan, pipe.vae.decode(latents, device="cpu"))
    finally:
        pipe.use_decoder("small")


def test_a_stream_decodes_with_the_small_decoder(pipe, first):
    stream = pipe.open_stream(first, PROMPT, seed=3, steps=2, window=2)
    frames = [stream.step(constant_actions(1, {"Yaw Left": 1.0})) for _ in range(3)]
    assert [len(f) for f in frames] == [5, 4, 4]
    assert stream.decoder.nbytes > 0
    one_shot = video_to_frames(decode_video(pipe.small_decoder, stream.latents))
    assert np.abs(np.concatenate(frames).astype(int) - one_shot).max() <= 1  # float32 batching: at most 1 level


def test_the_choice_is_refused_by_name():
    pipe = build_pipeline(preset="tiny", controller=False)
    with pytest.raises(ValueError, match="decoder: 'small' needs a small decoder"):
        pipe.use_decoder("small")
    with pytest.raises(ValueError, match=r"decoder must be one of \['wan', 'small'\], got 'tiny'"):
        pipe.use_decoder("tiny")
    with pytest.raises(ValueError, match="small decoder: it reads 16-channel latents"):
        pipe.use_decoder("small", SmallDecoder(SmallDecoderConfig(z_dim=16, widths=[8, 8, 8], blocks=[1, 0, 0],
                                                                  patch=4)))
    assert pipe.decoder == "wan"
