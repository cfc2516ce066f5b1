"""python -m training.synthetic: user errors without a traceback."""
import pytest

from training.synthetic import main


@pytest.mark.parametrize("argv, field", [(["--frames", "18"], "num_frames"), (["--height", "63"], "height"),
                                         (["--clips", "0"], "clips"), (["--tilt_deg", "80"], "tilt_deg")])
def test_cli_reports_user_errors_without_traceback(tmp_path, capsys, argv, field):
    args = ["--out", str(tmp_path), "--clips", "1", "--height", "32", "--width", "32", "--frames", "5"]
    assert main(args + argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and field in err and "Traceback" not in err
