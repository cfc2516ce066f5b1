"""training.trainer.outputs: optional wandb logging."""
import sys
from types import SimpleNamespace

from training.trainer.outputs import wandb_logger


def test_wandb_is_optional(monkeypatch, caplog):
    monkeypatch.setitem(sys.modules, "wandb", None)  # "not installed": import raises ImportError
    main_process = SimpleNamespace(is_main_process=True)
    config = SimpleNamespace(use_wandb=True, wandb_project="p", wandb_run_name=None, to_dict=dict)
    with caplog.at_level("WARNING"):
        assert wandb_logger(config, main_process) is None
    assert "--use_wandb: wandb is not installed" in caplog.text
    assert wandb_logger(SimpleNamespace(use_wandb=False), main_process) is None
