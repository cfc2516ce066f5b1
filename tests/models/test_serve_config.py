"""models.serve_config: serve.json's one owner: defaults, round trip, and refusals that name the file and field."""
import json

import pytest

from models.options import CausalSettings
from models.serve_config import SERVE_CONFIG_NAME, ServeConfig, load_serve_config, save_serve_config


def test_round_trip_and_defaults(tmp_path):
    assert load_serve_config(str(tmp_path)) is None  # no file: the reader's defaults apply
    config = ServeConfig(height=64, width=96, chunk_frames=5, fps=8, steps=3, action_guidance=3,
                         action_guidance_rescale=0.7, sample="synthetic-3", autoregressive=True, weights="a line",
                         notes="what to expect", generation="causal", block_frames=2, window=5, sink=False,
                         decoder="small")
    save_serve_config(str(tmp_path), config)
    loaded = load_serve_config(str(tmp_path))
    assert loaded == config and isinstance(loaded.action_guidance, float)
    (tmp_path / SERVE_CONFIG_NAME).write_text(json.dumps({"fps": 12}))
    partial = load_serve_config(str(tmp_path))
    assert partial.fps == 12 and (partial.height, partial.chunk_frames, partial.steps) == (128, 9, 4)
    assert partial.decoder == "wan"  # a world without the field decodes with its VAE


@pytest.mark.parametrize("field, value, message", [
    ("chunk_frames", 6, "chunk_frames must be 4k\\+1"),
    ("height", 100, "height and width must be multiples of 32"),
    ("steps", 0, "steps must be a positive integer"),
    ("fps", "8", "fps must be a positive integer"),
    ("action_guidance", 0.5, "action_guidance must be a number >= 1"),
    ("action_guidance_rescale", 2, "action_guidance_rescale must be a number in \\[0, 1\\]"),
    ("cfg_scale", float("nan"), "cfg_scale must be a number >= 1"),
    ("sample", "../etc", "sample must be a bundled sample name"),
    ("autoregressive", "yes", "autoregressive must be true or false"),
    ("notes", ["a", "list"], "notes must be a string"),
    ("chunk_frame", 9, "unknown field\\(s\\) \\['chunk_frame'\\]"),
    ("generation", "stream", "generation must be one of \\['chunked', 'causal'\\]"),
    ("block_frames", 0, "block_frames must be an integer >= 1"),
    ("window", -2, "window must be an integer >= 0"),
    ("sink", "no", "sink must be true or false"),
    ("decoder", "tiny", "decoder must be one of \\['wan', 'small'\\]"),
])
def test_bad_values_are_refused_naming_the_file_and_field(tmp_path, field, value, message):
    (tmp_path / SERVE_CONFIG_NAME).write_text(json.dumps({field: value}))
    with pytest.raises(ValueError, match=f"{SERVE_CONFIG_NAME}: {message}"):
        load_serve_config(str(tmp_path))


def test_broken_json_is_named(tmp_path):
    (tmp_path / SERVE_CONFIG_NAME).write_text("{\"fps\": 8,")
    with pytest.raises(ValueError, match="serve.json: invalid JSON"):
        load_serve_config(str(tmp_path))
    (tmp_path / SERVE_CONFIG_NAME).write_text("[1, 2]")
    with pytest.raises(ValueError, match="expected a JSON object"):
        load_serve_config(str(tmp_path))


def test_the_committed_toy_world_reads_through_it():
    config = load_serve_config("worlds/toy")
    assert (config.height, config.width, config.chunk_frames, config.generation) == (128, 128, 5, "causal")
    assert config.causal_settings() == CausalSettings(block_frames=1, window=3, sink=True)  # one stream per flight
    assert "ignores the prompt" in config.notes and "128x128" in config.notes  # the page's "what to expect"
