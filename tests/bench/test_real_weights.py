"""bench.real_weights (the real-weights chain on a GPU) checked on CPU as far as it goes: the plan's commands parse
with the entry points they call, the runner (pass, fail, timeout, skips, time left, peak memory, partial results),
the result file, the checks of each step's output, the data step with OpenCV, the load step's checks on the tiny
pipeline, a real flight against the random world, and bench/real_weights.sh --dry_run. The 5B itself cannot load
here (24 GB of memory); bench/real_weights.sh runs the chain on a GPU machine."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bench import real_weights as rw
from bench import real_weights_steps as steps
from bench.schema import load_result
from models import fake_model_dir
from models.media import probe_video
from models.model_dir import check_model_dir
from models.tiny import build_tiny_pipeline
from server.settings import Settings
from training import merge_lora
from training.trainer.config import parse_config

ROOT = Path(__file__).resolve().parents[2]
PY = sys.executable



def test_the_plan_runs_each_entry_point_on_the_fake_folder_in_order():
    plan = rw.build_plan("/w", python="py")
    assert [s.name for s in plan] == ["write", "load", "flight", "data", "train", "merge", "reload"]
    by = {s.name: s for s in plan}
    assert by["write"].command[:4] == ["py", "-m", "models.fake_model_dir", "/w/fake"]
    assert by["load"].command[:5] == ["py", "-m", "bench.real_weights_steps", "load", "/w/fake"]
    assert by["flight"].info["server"][:4] == ["--model_dir", "/w/fake", "--preset", "realtime"]
    train = by["train"].command
    assert train[:3] == ["py", "-m", "training.train"]
    config = parse_config(train[3:])  # every flag exists in training.train
    assert (config.model_dir, config.dataset_base_path, config.lora_base_model, config.max_steps) == \
        ("/w/fake", "/w/data", "dit", 2)
    assert (config.num_frames, config.height, config.width) == (17, 480, 832)
    assert config.trainable_models == "action_controller" and config.output_path == "/w/run"
    merge = merge_lora.build_parser().parse_args(by["merge"].command[3:])
    assert (merge.model_dir, merge.lora_path, merge.output_dir) == ("/w/fake", "/w/run", "/w/merged")
    load, reload, data = (steps.build_parser().parse_args(by[name].command[3:]) for name in ("load", "reload", "data"))
    assert (load.step, load.folder, load.device, load.compare, load.drop_caches) == ("load", "/w/fake", "cuda", None,
                                                                                     False)
    assert (reload.folder, reload.compare, reload.report) == ("/w/merged", "/w/fake", "/w/reload.json")
    assert (data.out, data.clips, data.frames, data.height, data.width) == ("/w/data", 2, 17, 480, 832)
    write = fake_model_dir.build_parser().parse_args(by["write"].command[3:])
    assert (write.out, write.dtype, write.only) == ("/w/fake", "bf16", "dit,text_encoder,vae,tokenizer")
    server = Settings.from_args(by["flight"].info["server"])
    assert (server.model_dir, server.chunk_frames, server.steps, server.gradio) == ("/w/fake", 17, 4, False)
    assert {s.name: s.needs for s in plan} == {"write": (), "load": ("write",), "flight": ("write",), "data": (),
                                               "train": ("write", "data"), "merge": ("train",),
                                               "reload": ("merge",)}
    cold = rw.build_plan("/w", python="py", drop_caches=True)[1].command
    assert cold[-1] == "--drop_caches" and "--drop_caches" not in by["reload"].command  # only the first read


def script(code: str) -> list:
    return [PY, "-c", code]


def test_the_runner_records_pass_fail_timeout_and_skips(tmp_path):
    marker = tmp_path / "made.json"
    seen = []

    def flight(limit, log_path):
        return {"frames": 3, "limit": limit}

    def broken(limit, log_path):
        raise RuntimeError("server exited with 1")

    plan = [
        rw.Step("ok", 60, script(f"import json; json.dump({{'n': 2}}, open({str(marker)!r}, 'w')); print('done')"),
                check=lambda record: {"n": json.loads(marker.read_text())["n"]}),
        rw.Step("bad", 60, script("print('no such folder'); raise SystemExit(3)")),
        rw.Step("after_bad", 60, script("print('never')"), needs=("bad",)),
        rw.Step("slow", 1, script("import time; time.sleep(60)")),
        rw.Step("check_fails", 60, script("pass"), check=lambda record: 1 / 0),
        rw.Step("fly", 60, function=flight, needs=("ok",)),
        rw.Step("fly_broken", 60, function=broken),
    ]
    started = time.monotonic()
    records = rw.run_plan(plan, str(tmp_path / "logs"), time_limit=300, on_step=lambda r: seen.append(list(r)))
    assert time.monotonic() - started < 40  # the sleeper was killed at its limit
    status = {name: r["status"] for name, r in records.items()}
    assert status == {"ok": "pass", "bad": "fail", "after_bad": "skipped", "slow": "timeout",
                      "check_fails": "fail", "fly": "pass", "fly_broken": "fail"}
    assert records["ok"]["details"] == {"n": 2} and records["ok"]["peak_host_GB"] > 0.001
    assert records["bad"]["why"] == "exit status 3" and "no such folder" in records["bad"]["log_tail"]
    assert records["after_bad"]["why"] == "needs bad" and records["after_bad"]["seconds"] is None
    assert records["slow"]["seconds"] < 15 and "killed at the limit of 1 s" in records["slow"]["why"]
    assert records["check_fails"]["why"].startswith("ZeroDivisionError")
    assert records["fly"]["details"]["frames"] == 3 and records["fly_broken"]["why"] == \
        "RuntimeError: server exited with 1"
    assert seen[0] == ["ok"] and seen[-1] == list(status)  # results after every step
    assert all(r["peak_gpu_GB"] is None for r in records.values())  # no nvidia-smi here


def test_steps_are_skipped_when_no_time_is_left(tmp_path):
    plan = [rw.Step("first", 60, script("import time; time.sleep(1.5)")), rw.Step("second", 60, script("pass"))]
    records = rw.run_plan(plan, str(tmp_path), time_limit=2.0, min_left=1.0)
    assert records["first"]["status"] == "pass" and records["first"]["limit_s"] == 2.0
    assert records["second"]["status"] == "skipped" and records["second"]["why"].startswith("no time left")


def test_the_result_file_holds_every_step(tmp_path, monkeypatch, capsys):
    report = tmp_path / "write.json"
    plan = [rw.Step("write", 60, script(f"import json; json.dump({{'bytes': 22770000000, 'seconds': 40.5, "
                                        f"'disk_s': 20.0, 'write_GB_per_s': 1.14, 'peak_host_GB': 11.9, "
                                        f"'files': []}}, open({str(report)!r}, 'w'))"),
                    check=rw.check_write(str(report))),
            rw.Step("load", 60, script("raise SystemExit(1)"), needs=("write",)),
            rw.Step("reload", 60, script("pass"), needs=("load",))]
    monkeypatch.setattr(rw, "build_plan", lambda *args, **kwargs: plan)
    out, work = tmp_path / "result.json", tmp_path / "work"
    assert rw.main(["--work", str(work), "--out", str(out), "--time_limit", "120"]) == 1
    result = load_result(out)
    assert result["bench"] == "real_weights" and "note" not in result
    assert result["details"]["statuses"] == {"write": "pass", "load": "fail", "reload": "skipped"}
    figures = {f["name"]: (f["value"], f["unit"]) for f in result["figures"]}
    assert figures["write.size_GB"] == (22.77, "GB") and figures["write.disk_s"] == (20.0, "s")
    assert figures["steps_passed"] == (1, "count") and figures["steps_not_passed"] == (2, "count")
    assert "write.seconds" in figures and "reload.seconds" not in figures
    assert result["settings"]["work_filesystem"] and result["device"]["kind"] == "cpu"
    assert (work / rw.MARKER).is_file()
    assert rw.main(["--work", str(work), "--out", str(out), "--time_limit", "120"]) == 1  # its own folder: reused
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep")
    with pytest.raises(SystemExit) as exit_:
        rw.main(["--work", str(tmp_path / "mine"), "--out", str(out)])
    assert exit_.value.code == 2 and "--work: " in capsys.readouterr().err
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep"


def test_check_train_reads_the_run_and_the_log(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    for name in (rw.CONTROLLER_NAME, rw.LORA_NAME):
        (run / name).write_bytes(b"x" * 10)
    (run / rw.CONFIG_NAME).write_text(json.dumps({"training": {"status": "finished", "step": 2}}))
    log = tmp_path / "train.log"
    log.write_text("train:  50%|#####| 1/2\rstep 1 | loss 0.51234 | lr 1.000e-04 | grad_norm 0.033 | step_time 3.500s"
                   " | samples/s 0.29 | epoch 0.50\ntrain: 100%\rstep 2 | loss 0.40000 | lr 5.000e-05 | step_time "
                   "1.250s | samples/s 0.8 | epoch 1.00\n")
    details = rw.check_train(str(run), 2)({"log": str(log)})
    assert details["losses"] == [0.51234, 0.4] and details["step_time_s"] == [3.5, 1.25]
    (run / rw.CONFIG_NAME).write_text(json.dumps({"training": {"status": "running", "step": 1}}))
    with pytest.raises(ValueError, match="training ended as 'running' at step 1"):
        rw.check_train(str(run), 2)({"log": str(log)})


def test_the_data_step_writes_clips_opencv_and_the_trainer_read(tmp_path):
    assert steps.make_data(str(tmp_path), clips=1, frames=9, height=64, width=96, encoder="cv2") == "cv2"
    rows = (tmp_path / "metadata.csv").read_text().splitlines()
    assert rows[0] == "video,prompt,action" and len(rows) == 2
    video = tmp_path / rows[1].split(",")[0]
    assert probe_video(video) == {"fps": 24.0, "frames": 9, "width": 96, "height": 64}


def test_the_load_checks_on_the_tiny_pipeline():
    tiny = {"dit_dim": 64, "dit_blocks": 2, "text_dim": 32, "text_len": 32}
    summary = steps.inspect_pipeline(build_tiny_pipeline(seed=0), expected=tiny, size=64)
    assert summary["checks"] == {name: True for name in ("dit", "text_encoder", "vae", "tokenizer",
                                                         "division_factor_32", "dtype", "prompt_encoded",
                                                         "generation_finite")}
    assert summary["parameters"]["dit"] > 0 and summary["generate_s"] > 0
    wrong = steps.inspect_pipeline(build_tiny_pipeline(seed=0), size=64)  # expects the 5B
    assert not wrong["checks"]["dit"] and not wrong["checks"]["prompt_encoded"]


def test_weight_change_between_a_base_and_a_merged_folder(tmp_path):
    import torch
    from safetensors.torch import save_file

    keys = steps.COMPARED
    for folder, delta in (("base", 0.0), ("merged", 0.25)):
        (tmp_path / folder).mkdir()
        save_file({key: torch.full((4, 4), 1.0 + delta * i) for i, key in enumerate(keys)},
                  str(tmp_path / folder / "diffusion_pytorch_model-00001-of-00001.safetensors"))
    weight_map = {key: "diffusion_pytorch_model-00001-of-00001.safetensors" for key in keys}
    (tmp_path / "base" / fake_model_dir.DIT_INDEX).write_text(json.dumps({"weight_map": weight_map}))
    assert steps.weight_change(str(tmp_path / "base"), str(tmp_path / "merged")) == {
        keys[0]: 0.0, keys[1]: 0.25, keys[2]: 0.5}


def test_a_real_flight_against_the_random_world(tmp_path):
    """The flight step's own code (server_process, the WebSocket client, its checks) on the tiny random world."""
    log = tmp_path / "flight.log"
    details = rw.flight_step(["--world", "random", "--gradio", "0", "--log_level", "info"], 5.0)(90.0, str(log))
    assert details["world"]["name"] == "random" and details["chunks"] >= 1
    assert details["frames_per_s_per_session"][0] > 0 and details["ready_s"] > 0
    assert "warm-up generation took" in log.read_text()  # the server's info lines reach the log


def test_the_shell_script_dry_run_prints_the_plan(tmp_path):
    done = subprocess.run(["bash", str(ROOT / "bench" / "real_weights.sh"), str(tmp_path / "out"), "--dry_run"],
                          capture_output=True, text=True, env={**os.environ, "PYTHON": PY}, timeout=120)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert any(line.startswith("train: ") and "--model_dir" in line for line in lines)
    assert any(line.startswith("flight: python -m server --model_dir") for line in lines)
    assert not (tmp_path / "out" / "real_weights.json").exists()


def test_gpu_memory_is_the_peak_nvidia_smi_reported(tmp_path, monkeypatch):
    fake_smi = tmp_path / "nvidia-smi"
    fake_smi.write_text("#!/bin/sh\nfor mib in 100 2048 512; do echo $mib; done\nexec sleep 30\n")
    fake_smi.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    sampler = rw.GpuMemory()
    time.sleep(1.0)
    assert sampler.stop() == round(2048 * 2**20 / 1e9, 3)  # MiB -> GB
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    assert rw.GpuMemory().stop() is None


def test_merge_and_compare_on_the_generators_folder_format(tmp_path, monkeypatch):
    """The merge step's CPU proxy: the generator's shards + index (the tiny DiT's keys), merge_lora with a LoRA on
    one layer, then check_merge and the reload's weight comparison."""
    import torch
    from safetensors.torch import save_file

    dit = tuple((k, tuple(v.shape)) for k, v in build_tiny_pipeline(seed=0).dit.state_dict().items())
    small = {"dit": dit, "vae": (("encoder.conv1.weight", (4, 3, 3, 3, 3)),),
             "text_encoder": (("token_embedding.weight", (32, 8)),)}
    monkeypatch.setattr(fake_model_dir, "component_tensors", small.__getitem__)
    monkeypatch.setattr(fake_model_dir, "SHARD_BYTES_FP32", 400_000)
    fake = tmp_path / "fake"
    fake_model_dir.write_files(str(fake), fake_model_dir.layout_files("bf16"), log=lambda line: None)
    assert len(list(fake.glob("diffusion_pytorch_model-*.safetensors"))) >= 2  # sharded, with an index
    q = dict(dit)["blocks.0.self_attn.q.weight"]  # (out, in)
    generator = torch.Generator().manual_seed(0)
    lora = {"blocks.0.self_attn.q.lora_A.default.weight": torch.randn(4, q[1], generator=generator),
            "blocks.0.self_attn.q.lora_B.default.weight": torch.randn(q[0], 4, generator=generator)}
    save_file(lora, str(tmp_path / "lora.safetensors"))
    merged = tmp_path / "merged"
    assert merge_lora.main(["--model_dir", str(fake), "--lora_path", str(tmp_path / "lora.safetensors"),
                            "--output_dir", str(merged)]) == 0
    check_model_dir(str(merged))
    assert rw.check_merge(str(merged))({}) == {"merged_modules": 1}
    change = steps.weight_change(str(fake), str(merged))
    assert change["blocks.0.self_attn.q.weight"] > 0.1
    assert change["blocks.0.self_attn.o.weight"] == change["blocks.0.ffn.0.weight"] == 0.0
