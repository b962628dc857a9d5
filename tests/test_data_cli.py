"""`cwm data` errors a user can cause: one clear message, exit code 2, no traceback."""

import subprocess
import sys

import pytest


def cwm_data(*args, code=None):
    cmd = [sys.executable, "-c", code, *args] if code else [sys.executable, "-m", "cwm", "data", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize(
    "args, message",
    [
        (["build", "--source", "nonsense", "--out", "{tmp}/d"], "unknown --source 'nonsense'"),
        (["build", "--source", "synth", "--out", "{tmp}/d"], "--source synth needs --n"),
        (["build", "--source", "synth:depth=3", "--n", "2", "--out", "{tmp}/d"], "bad synth knob 'depth=3'"),
        (["build", "--source", "programs:{tmp}/missing.jsonl", "--out", "{tmp}/d"], "no such file"),
        (["build", "--source", "dir:{tmp}/nowhere", "--out", "{tmp}/d", "--decontaminate", "none"], "is not a directory"),
        (["stats", "{tmp}"], "is not a dataset (no manifest.json)"),
        # knobs no program can meet: the generator gives up (in a worker too), the build says so
        (["build", "--source", "synth:max_events=1", "--n", "2", "--out", "{tmp}/d", "--decontaminate", "none"], "no valid program for seed 0"),
        (["build", "--source", "synth:max_events=1", "--n", "2", "--out", "{tmp}/d", "--decontaminate", "none", "--workers", "2"],
         "no valid program for seed 0"),
    ],
)
def test_user_errors_are_one_clear_line(tmp_path, args, message):
    run = cwm_data(*[a.format(tmp=tmp_path) for a in args])
    assert run.returncode == 2, run.stderr
    assert message in run.stderr and "Traceback" not in run.stderr


def test_ray_missing_is_a_clear_message(tmp_path):
    # Ray is installed here; hide it (as on a machine without the extra) and ask for --ray.
    code = "import sys; sys.modules['ray'] = None; from cwm.cli import main; sys.exit(main(['data', *sys.argv[1:]]))"
    run = cwm_data("build", "--source", "synth", "--n", "2", "--out", str(tmp_path / "d"), "--ray", "local", code=code)
    assert run.returncode == 2
    assert "--ray needs Ray, which is not installed: pip install 'cwm[distributed]'" in run.stderr
    assert "Traceback" not in run.stderr


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    from cwm.data.build import BuildParams, build

    out = tmp_path_factory.mktemp("dataset")
    build(out, BuildParams(source="synth", n=8, shard_size=4, max_events=2000, timeout=3.0, decontaminate=()), progress=False)
    return out


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory):
    import difflib
    from pathlib import Path

    from cwm.tokenizer import train_bpe

    out = tmp_path_factory.mktemp("tok")
    train_bpe(iter([Path(difflib.__file__).read_text()]), vocab_size=300, out_dir=out)
    return out


def _copy(dataset, to):
    import shutil

    shutil.copytree(dataset, to)
    return to


@pytest.mark.parametrize(
    "manifest, message",
    [
        (b"{not json", "manifest.json: not a readable JSON manifest"),
        (b"\xff\xfe\x00 not utf-8", "manifest.json: not a readable JSON manifest"),
        (b"[1, 2]", "format 'a JSON list', expected 'cwm-dataset-v1'"),
        (b'{"format": "cwm-dataset-v1", "kind": "traces", "params": {}, "num_records": 8, "complete": true, "shards": []}',
         "a damaged manifest (its 'shards' is missing or of the wrong type)"),
        (b'{"format": "cwm-dataset-v1", "kind": "traces", "params": {}, "num_records": 8, "complete": true,'
         b' "shards": {"../../etc/passwd": {"rows": 1}}}', "a damaged manifest (its 'shards'"),
        (b'{"format": "cwm-dataset-v1", "kind": "traces", "params": {}, "num_records": "8", "complete": true, "shards": {}}',
         "its 'num_records' is missing or of the wrong type"),
    ],
)
def test_a_corrupt_manifest_is_one_line_and_exit_2_for_stats_pack_and_build(dataset, tokenizer_dir, tmp_path, manifest, message):
    bad = _copy(dataset, tmp_path / "bad")
    (bad / "manifest.json").write_bytes(manifest)
    for args in (["stats", str(bad)],
                 ["pack", "--input", f"{bad}:1", "--tokenizer", str(tokenizer_dir), "--out", str(tmp_path / "packed"), "--seq-len", "64"],
                 ["build", "--source", "synth", "--n", "8", "--shard-size", "4", "--out", str(bad), "--decontaminate", "none", "--quiet"]):
        run = cwm_data(*args)
        assert run.returncode == 2, (args, run.stderr)
        assert message in run.stderr and str(bad / "manifest.json") in run.stderr, (args, run.stderr)
        assert "Traceback" not in run.stderr and len(run.stderr.strip().splitlines()) == 1, run.stderr


def test_a_truncated_parquet_shard_is_one_line_and_exit_2(dataset, tokenizer_dir, tmp_path):
    bad = _copy(dataset, tmp_path / "bad")
    shard = bad / "shard-00001.parquet"
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
    for args in (["stats", str(bad)],
                 ["pack", "--input", f"{bad}:1", "--tokenizer", str(tokenizer_dir), "--out", str(tmp_path / "packed"), "--seq-len", "64", "--quiet"]):
        run = cwm_data(*args)
        assert run.returncode == 2, (args, run.stderr)
        assert f"{shard}: not a readable Parquet shard" in run.stderr and "Traceback" not in run.stderr, run.stderr
        assert len(run.stderr.strip().splitlines()) == 1, run.stderr


def test_non_utf8_jsonl_is_one_line_and_exit_2(tokenizer_dir, tmp_path):
    chat = tmp_path / "chat.jsonl"
    chat.write_bytes(b'{"messages": [{"role": "user", "content": "caf\xe9"}]}\n')
    run = cwm_data("pack", "--input", f"{chat}:1", "--tokenizer", str(tokenizer_dir), "--out", str(tmp_path / "packed"), "--quiet")
    assert run.returncode == 2 and f"{chat}: not UTF-8 text" in run.stderr and "Traceback" not in run.stderr, run.stderr
    programs = tmp_path / "programs.jsonl"
    programs.write_bytes(b'{"source": "def f():\\n    return 1\\n", "call": "f()"}\n{"source": "x = \'\xff\'", "call": "x"}\n')
    run = cwm_data("build", "--source", f"programs:{programs}", "--out", str(tmp_path / "d"), "--decontaminate", "none", "--quiet")
    assert run.returncode == 2 and f"{programs}:2: not a" in run.stderr and "UnicodeDecodeError" in run.stderr, run.stderr
    assert "Traceback" not in run.stderr
    programs.write_bytes(b'{"source": 12, "call": "f()"}\n')
    run = cwm_data("build", "--source", f"programs:{programs}", "--out", str(tmp_path / "d"), "--decontaminate", "none", "--quiet")
    assert run.returncode == 2 and f"{programs}:1: not a" in run.stderr and "must be strings" in run.stderr, run.stderr
