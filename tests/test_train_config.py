"""Training configs: TOML loading, overrides, clear errors, the written-back config, and the CLI's
handling of bad configs and --dry-run (which builds the 32B model on the meta device)."""

import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from cwm.train.config import ConfigError, TrainConfig, dump_toml, load_config

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted((ROOT / "configs").glob("*.toml"))


def cwm_train(*args, cwd=ROOT):
    return subprocess.run(
        [sys.executable, "-m", "cwm", "train", *args], cwd=cwd, capture_output=True, text=True, timeout=120
    )


def write(tmp_path, text):
    path = tmp_path / "c.toml"
    path.write_text(text)
    return path


def test_every_shipped_config_loads_and_round_trips():
    assert {p.stem for p in CONFIGS} >= {"smoke", "small-cpu", "cwm-32b-pretrain", "cwm-32b-midtrain", "cwm-32b-sft"}
    for path in CONFIGS:
        cfg = load_config(path)
        again = tomllib.loads(dump_toml(cfg))
        assert load_config(None, [f"{s}.{k}={_toml(v)}" for s, table in again.items() for k, v in table.items()]) == cfg


def _toml(value):
    from cwm.train.config import _toml_value

    return _toml_value(value)


def test_overrides_use_toml_syntax_and_bare_strings(tmp_path):
    path = write(tmp_path, '[train]\nmax_steps = 5\n[data]\ntrain = ["a"]\n')
    cfg = load_config(
        path,
        [
            "optim.lr=1e-3",
            "optim.betas=[0.8, 0.9]",
            "train.out_dir=runs/my run",
            "model.overrides.n_layers=2",
            "train.compile=true",
        ],
    )
    assert cfg.optim.lr == 1e-3 and cfg.optim.betas == [0.8, 0.9]
    assert cfg.train.out_dir == "runs/my run" and cfg.train.compile is True
    assert cfg.model.overrides == {"n_layers": 2}
    assert cfg.train.max_steps == 5 and cfg.data.train == ["a"]
    assert isinstance(load_config(path, ["optim.lr=1"]).optim.lr, float)  # an int where a float goes


@pytest.mark.parametrize(
    "text, overrides, message",
    [
        ("[optim]\nlrr = 1e-3\n", [], "unknown key 'optim.lrr'; did you mean 'optim.lr'?"),
        ("[optimizer]\nlr = 1e-3\n", [], "unknown key 'optimizer'"),
        ("[train]\nmax_steps = 'ten'\n", [], "train.max_steps = 'ten' should be an integer"),
        ("[train]\nmax_steps = 1.5\n", [], "train.max_steps = 1.5 should be an integer"),
        ("[train]\ncompile = 1\n", [], "train.compile = 1 should be true or false"),
        ("[data]\ntrain = 'a'\n", [], "data.train = 'a' should be a list of a string"),
        ("[train]\nmax_steps = 1\n", ["schedule.kind=linear"], "schedule.kind = 'linear'"),
        ("[train]\nmax_steps = 1\nglobal_batch_size = 6\nmicro_batch_size = 4\n", [], "multiple of micro_batch_size"),
        ("[train]\nmax_steps = 0\n", [], "set train.max_steps or train.max_tokens"),
        ("[train]\nmax_steps = 1\n", ["oops"], "is not `section.key=value`"),
        ("[train\n", [], "not valid TOML"),
    ],
)
def test_bad_configs_give_one_clear_message(tmp_path, text, overrides, message):
    with pytest.raises(ConfigError) as err:
        load_config(write(tmp_path, text), overrides)
    assert message in str(err.value)


def test_cli_bad_configs_exit_2_with_one_line(tmp_path, capsys):
    from cwm.cli import main
    from cwm.train.bytedata import write_byte_dataset

    data = write_byte_dataset(tmp_path / "data", [b"def f(x):\n    return x\n" * 20], seq_len=129)
    truncated = write_byte_dataset(tmp_path / "truncated", [b"x = 1\n" * 100], seq_len=129)
    (truncated / "tokens.bin").write_bytes(b"\0" * 10)
    smoke = ["train", "--config", "configs/smoke.toml", f"data.train=['{data}']", "data.valid=[]"]
    for args, message in [
        (["train", "--config", str(tmp_path / "missing.toml")], "not found"),
        ([*smoke, "data.train=['/nonexistent/set']"], "/nonexistent/set is not a packed dataset"),
        ([*smoke, f"data.train=['{truncated}']"], "tokens.bin: missing or truncated"),
        ([*smoke, "data.seq_len=65"], "data.seq_len is 65"),
        ([*smoke, "model.preset=cwm-huge"], "unknown model preset 'cwm-huge'"),
        ([*smoke, "model.overrides.n_layerz=2"], "n_layerz"),
        ([*smoke, f"model.init_from='{tmp_path}'"], "cannot load"),
    ]:
        assert main(args) == 2
        err = capsys.readouterr().err
        assert err.startswith("cwm train: error: ") and message in err and err.count("\n") == 1, err


def test_cli_subprocess_exit_code_and_no_traceback(tmp_path):
    result = cwm_train("--config", str(write(tmp_path, "[optim]\nlrr = 1e-3\n")))
    assert result.returncode == 2
    assert (
        result.stderr.endswith("unknown key 'optim.lrr'; did you mean 'optim.lr'?\n")
        and "Traceback" not in result.stderr
    )


def test_dry_run_of_the_32b_recipe_prints_its_plan(capsys):
    from cwm.cli import main

    # The real command, once, reporting its peak memory: the model is built as a run builds it
    # (trainer.build_model, activation checkpointing on) on the meta device: 32.5B fp32 parameters
    # would take 130 GB.
    report = "import resource, sys; print('peak_kib', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr)"
    command = f"import sys; from cwm.cli import main; rc = main(sys.argv[1:]); {report}; sys.exit(rc)"
    out = subprocess.run(
        [sys.executable, "-c", command, "train", "--config", "configs/cwm-32b-pretrain.toml", "--dry-run"],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )
    assert out.returncode == 0, out.stderr
    assert int(out.stderr.split("peak_kib")[-1]) < 1.5 * 2**20  # KiB: under 1.5 GiB
    text = out.stdout
    assert "32,5" in text and "(32.5" in text  # 32.5xB parameters, counted on the meta device
    assert "8,192 tokens" in text  # context
    assert "953,675" in text  # steps = ceil(8e12 / (1024 * 8192))
    assert "memory/device: total" in text and "GiB" in text
    for phase, steps in [("midtrain", "596,047"), ("sft", "23,842")]:
        assert main(["train", "--config", f"configs/cwm-32b-{phase}.toml", "--dry-run"]) == 0
        text = capsys.readouterr().out
        assert steps in text, text
        assert f"runs/cwm-32b/{'pretrain' if phase == 'midtrain' else 'midtrain'}/final" in text


def test_defaults_are_a_valid_config_once_steps_are_set():
    assert isinstance(load_config(None, ["train.max_steps=1"]), TrainConfig)


@pytest.mark.parametrize("content, message", [
    (b"[train]\nmax_steps = 1\n# \xff\xfe caf\xe9\n", "not UTF-8 text"),
    (b"[train\nmax_steps = = 1\n", "not valid TOML"),
    (b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR", "not UTF-8 text"),
    (b"[model]\noverrides = {n_layers = 100000000}\n[train]\nmax_steps = 1\n", "n_layers = 100000000 is outside"),
    (b"[model]\noverrides = {dim = 1000000000}\n[train]\nmax_steps = 1\n", "dim = 1000000000 is outside"),
    (b"[model]\noverrides = {vocab_size = 1000000000000}\n[train]\nmax_steps = 1\n", "vocab_size = 1000000000000"),
])
def test_cli_corrupt_or_absurd_config_files_exit_2_with_one_line(tmp_path, content, message):
    path = tmp_path / "c.toml"
    path.write_bytes(content)
    result = cwm_train("--config", str(path), "--dry-run")  # --dry-run would build the model: it must not start
    assert result.returncode == 2, result.stderr
    assert message in result.stderr and (str(path) in result.stderr or "cwm train: error: model:" in result.stderr)
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr


def test_dry_run_of_the_cwm_mini_recipes_prints_their_plans(capsys):
    """The shipped model's two phases and its GPU config are checked by --dry-run (no data needed)."""
    from cwm.cli import main

    for name, params, tokens in [("cwm-mini", "1,901,696", "4,915,200"), ("cwm-mini-phase2", "1,901,696", "34,406,400"),
                                 ("cwm-mini-gpu", "15,931,776", "524,288,000")]:
        assert main(["train", "--config", f"configs/{name}.toml", "--dry-run"]) == 0
        text = capsys.readouterr().out
        assert params in text and tokens in text, text
