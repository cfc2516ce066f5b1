"""server.settings: options from the command line and the environment, presets, refused values."""
import pytest

from server.settings import PRESETS, Settings, build_parser, field_help


def test_settings_from_env_and_cli():
    settings = Settings.from_args(["--max_sessions", "3", "--allowed_origins", "http://a,http://b"],
                                  env={"WANFLY_TOKEN": "s3cret", "WANFLY_MAX_SESSIONS": "9", "WANFLY_GRADIO": "0"})
    assert settings.max_sessions == 3 and settings.token == "s3cret" and settings.gradio is False
    assert settings.allowed_origins == ["http://a", "http://b"]
    with pytest.raises(SystemExit):
        Settings.from_args(["--max_sessions", "0"], env={})


def test_the_environment_carries_every_setting_to_the_app_factory():
    """``python -m server`` hands its checked settings to ``server.app.app_from_env`` as WANFLY_* variables: every
    kind of field comes back equal (lists, booleans, floats, None as an unset variable)."""
    settings = Settings.from_args(["--port", "0", "--allowed_origins", "http://a,http://b", "--gradio", "0",
                                   "--compile", "--block_margin_s", "0.1", "--action_guidance", "1.75",
                                   "--max_sessions", "3", "--token", "t0k", "--recordings_dir", "/tmp/r x"], env={})
    env = settings.to_env()
    assert env["WANFLY_GRADIO"] == "0" and env["WANFLY_COMPILE"] == "1" and env["WANFLY_HEIGHT"] is None
    assert env["WANFLY_ALLOWED_ORIGINS"] == "http://a,http://b" and env["WANFLY_BLOCK_MARGIN_S"] == "0.1"
    assert Settings.from_args([], env={k: v for k, v in env.items() if v is not None}) == settings
    assert Settings.from_args([], env={k: v for k, v in Settings().to_env().items() if v is not None}) == Settings()


@pytest.mark.parametrize("option, value, message", [
    ("--action_guidance", "0.5", "action_guidance must be a number >= 1"),
    ("--action_guidance_rescale", "2", "action_guidance_rescale must"),
    ("--decoder", "tiny", "decoder must be one of ['wan', 'small']"),
    ("--jpeg_device", "gpu", "jpeg_device must be auto, cpu, cuda or cuda:N"),
    ("--decode_device", "cuda1", "decode_device must be cpu, cuda or cuda:N"),
    ("--port", "99999", "port must be in 0..65535")])
def test_bad_guidance_options_stop_the_command_line_before_any_work(capsys, option, value, message):
    with pytest.raises(SystemExit) as exit_:
        Settings.from_args([option, value], env={})
    assert exit_.value.code == 2 and message in capsys.readouterr().err


def test_realtime_preset_fills_unset_generation_fields_only():
    settings = Settings.from_args(["--preset", "realtime", "--steps", "2", "--compile"], env={})
    preset = PRESETS["realtime"]
    assert (settings.height, settings.width, settings.chunk_frames, settings.cfg_scale) == \
        (preset["height"], preset["width"], preset["chunk_frames"], 1.0)
    assert settings.steps == 2 and settings.compile is True  # an explicit option wins; "--compile" alone is true
    assert Settings.from_args(["--compile", "0"], env={}).compile is False
    with pytest.raises(ValueError, match="preset"):
        Settings(preset="fastest")


def test_help_describes_every_option_from_the_settings_class():
    """``python -m server --help``: one short usage line, no markup, and each option described by its comment in
    the Settings class (the one source), in the class's groups."""
    helps, groups = field_help()
    assert set(helps) == set(Settings.__dataclass_fields__) and all(len(text) > 10 for text in helps.values()), helps
    assert helps["max_sessions"].endswith("from the measured per-stream memory for causal ones")  # continued lines
    assert groups["speed"] == ["compile", "decoder", "decode_device", "decode_overlap", "jpeg_device", "fp8"]
    assert "port" in groups["where and what to serve"]
    text = build_parser().format_help()
    assert text.splitlines()[0] == "usage: python -m server [--option VALUE ...]" and "``" not in text
    flat = " ".join(text.split())
    for name, help_text in helps.items():
        assert f"--{name} " in flat and " ".join(help_text.split()) in flat, name
    assert "--port INT port to listen on" in flat and "(default: 8000)" in flat
    assert "--compile [BOOL] torch.compile" in flat
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--port", "eighty"])


def test_frame_path_options():
    settings = Settings.from_args(["--decoder", "small", "--decode_device", "cuda:1", "--jpeg_device", "cuda:0",
                                   "--fp8"], env={})
    assert (settings.decoder, settings.decode_device, settings.jpeg_device, settings.fp8) == \
        ("small", "cuda:1", "cuda:0", True)
    defaults = Settings.from_args([], env={})
    assert (defaults.decoder, defaults.decode_device, defaults.jpeg_device, defaults.fp8) == \
        (None, None, "auto", False)
