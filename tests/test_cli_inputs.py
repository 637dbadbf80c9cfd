"""Command-line values out of range or of the wrong kind: one ``Error:`` line naming the
option, what was given and what is accepted (exit 2), nothing written, no traceback."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from maxsim_forge.cli import main

from _helpers import one_error

BIG = "99999999999999999999999"


def _refused(args: list[str], *needles: str, code: int = 2) -> str:
    """The command failed with ``code`` and one ``Error:`` line last naming every needle."""
    return one_error(CliRunner().invoke(main, args), code, *needles)


@pytest.mark.parametrize("args", [["check", "--batch", "2"], ["tune", "--trials", "1"], ["bench", "--cases", ""]],
                         ids=lambda a: a[0])
@pytest.mark.parametrize("seed", [BIG, "4294967296", "-1"])
def test_a_seed_out_of_range_is_refused_by_name(tmp_path, args, seed):
    _refused([*args, "--seed", seed, *(["--db", str(tmp_path / "t.db")] if args[0] == "tune" else [])],
             "--seed", seed, "4294967295")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("budget", ["nan", "inf", "-inf", "-1", "0"])
def test_a_time_budget_that_is_not_a_finite_positive_number_is_refused(tmp_path, budget):
    _refused(["tune", "--time-budget", budget, "--db", str(tmp_path / "t.db")], "--time-budget", budget)
    assert list(tmp_path.iterdir()) == []


def _shapes(tmp_path, text: str = '[{"layout": "padded", "dtype": "fp16", "dim": 32, "lq": 8, "ld": 16, "nb": 3}]'):
    path = tmp_path / "shapes.json"
    path.write_text(text)
    return str(path)


def test_an_output_in_a_folder_that_does_not_exist_is_refused(tmp_path):
    shapes = _shapes(tmp_path)
    nowhere = tmp_path / "no" / "such"
    _refused(["tune", "--shapes", shapes, "--trials", "1", "--quiet", "--db", str(nowhere / "t.db")],
             "--db", f"folder {nowhere} does not exist; create it first")
    _refused(["bench", "--cases", "colbert-1k-fp16", "--repeat", "1", "--impl", "torch-eager", "--out", str(nowhere / "x")],
             "--out", f"folder {nowhere} does not exist")
    export = tmp_path / "w.json"
    export.write_text('{"format": "maxsim-forge-db", "version": 1, "winners": []}')
    for args in (["db", "merge", shapes], ["import", "--format", "json", str(export)], ["db", "import", str(export)]):
        _refused([*args, "--db", str(nowhere / "t.db")], "--db", f"folder {nowhere} does not exist")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["shapes.json", "w.json"]


def test_db_verify_refuses_a_seed_out_of_range_by_name(tmp_path):
    _refused(["db", "verify", "--seed", BIG, "--db", str(tmp_path / "t.db")], "--seed", BIG, "4294967295")


@pytest.mark.parametrize("cases", [",,", "", ","])
def test_bench_refuses_a_case_list_that_names_nothing_to_run(tmp_path, cases):
    _refused(["bench", "--cases", cases, "--out", str(tmp_path / "out")], "--cases", repr(cases), "--heldout N")
    assert list(tmp_path.iterdir()) == []


def test_bench_takes_an_empty_case_list_with_held_out_shapes(monkeypatch):
    # --cases "" --heldout N runs the held-out shapes only (BENCHMARKS.md's step).
    from maxsim_forge import bench

    ran = []
    monkeypatch.setattr(bench, "run", lambda group, *a, **k: (ran.append(group), ([], {}))[1])
    monkeypatch.setattr(bench, "format_report", lambda *a, **k: [])
    monkeypatch.setattr(bench, "write", lambda *a, **k: [])
    result = CliRunner().invoke(main, ["bench", "--cases", "", "--heldout", "2"])
    assert result.exit_code == 0, result.output
    assert [[c.name.startswith("heldout-") for c in group] for group in ran] == [[True, True]]


def test_bench_bounds_the_held_out_count():
    _refused(["bench", "--heldout", "99999999999"], "--heldout", "99999999999", "0<=x<=1000")


@pytest.mark.parametrize("name, content, why", [
    ("empty.json", b"[]", "holds no buckets"),
    ("empty.yaml", b"buckets: []\n", "holds no buckets"),
    ("bad.json", b"{bad", "not JSON (Expecting property name"),
    ("notes.txt", b"hello world\n", "not JSON (Expecting value"),
    ("blob.json", bytes(range(128, 256)), "not a text file (byte 0"),
    ("bad.yaml", b"- [unclosed\n", "not YAML ("),
    ("object.json", b'{"layout": "padded"}', "expected a list of buckets, got dict"),
])
def test_tune_names_a_shapes_file_that_holds_no_buckets(tmp_path, name, content, why):
    path = tmp_path / name
    path.write_bytes(content)
    _refused(["tune", "--shapes", str(path), "--trials", "1", "--quiet", "--db", str(tmp_path / "t.db")],
             "--shapes", f"{path}", why)
    assert sorted(p.name for p in tmp_path.iterdir()) == [name]


def _tune_with_storage(tmp_path, storage: str) -> list[str]:
    return ["tune", "--shapes", _shapes(tmp_path), "--trials", "1", "--quiet", "--storage", storage,
            "--db", str(tmp_path / "t.db")]


@pytest.mark.parametrize("url, needles", [
    ("bogus:foo", ["'bogus:foo' is no storage URL", "journal:PATH"]),
    ("bogus://foo", ["bogus://foo", "sqlalchemy.dialects:bogus", "journal:PATH"]),
    ("sqlite:///{tmp}/no/such/s.db", ["folder {tmp}/no/such does not exist"]),
    ("journal:{tmp}/no/such/j.log", ["folder {tmp}/no/such does not exist"]),
    ("journal:{tmp}", ["{tmp} is a folder"]),
])
def test_tune_refuses_a_storage_url_it_cannot_use_by_name(tmp_path, url, needles):
    url = url.replace("{tmp}", str(tmp_path))
    _refused(_tune_with_storage(tmp_path, url), "--storage", *(n.replace("{tmp}", str(tmp_path)) for n in needles))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["shapes.json"]


def test_tune_names_a_storage_server_it_cannot_reach(tmp_path):
    line = _refused(_tune_with_storage(tmp_path, "postgresql://nobody:secret@127.0.0.1:1/x"), "--storage",
                    "nobody:***@127.0.0.1:1/x", code=1)
    assert "secret" not in line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["shapes.json"]


@pytest.mark.parametrize("content", [b"hello\n", b'"op_code"\n', bytes(range(128, 256)), b'{"a": 1}\n'])
def test_tune_leaves_a_file_that_is_no_optuna_journal_as_it_was(tmp_path, content):
    journal = tmp_path / "notes.log"
    journal.write_bytes(content)
    _refused(_tune_with_storage(tmp_path, f"journal:{journal}"), "--storage", f"{journal} exists and is not an "
             "Optuna journal")
    assert journal.read_bytes() == content
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.log", "shapes.json"]


def test_tune_resumes_from_a_journal_it_wrote(tmp_path):
    journal = tmp_path / "tune.journal"
    for _ in range(2):
        result = CliRunner().invoke(main, _tune_with_storage(tmp_path, f"journal:{journal}"))
        assert result.exit_code == 0 and "winners written" in result.output, result.output
    assert journal.read_bytes().startswith(b'{"op_code"')


@pytest.mark.parametrize("config, needles", [
    ("{bad", ["not JSON (Expecting property name", "{bad"]),
    ('{"block_q": 17}', ["block_q=17 must be a power of two"]),
    ('{"nope": 1}', ["unknown config knob(s) ['nope']", "block_q"]),
    ('{"block_q": "x"}', ["block_q='x'"]),
    ("[]", ["a JSON object of knobs is expected, got list"]),
    ("null", ["a JSON object of knobs is expected, got NoneType"]),
])
def test_codegen_refuses_a_config_by_name(config, needles):
    _refused(["codegen", "--config", config], "--config", *needles)


def test_codegen_blames_the_options_that_are_wrong():
    # A limit that fits no dim is the limit's fault, not the dim's; one the default tiles
    # overflow says so; options that contradict each other are a usage error.
    _refused(["codegen", "--smem-limit", "1"], "--smem-limit", "1 bytes", "fit no fp16 kernel", "at least 1024")
    _refused(["codegen", "--smem-limit", "1023", "--dtype", "fp32"], "--smem-limit", "at least 2048")
    _refused(["codegen", "--smem-limit", "5000", "--dim", "64"], "--smem-limit", "the device allows 5000",
             "smaller tiles in --config")
    _refused(["codegen", "--layout", "pairs", "--q-mask", "lengths"], "q_mask='lengths' contradicts layout 'pairs'")
    result = CliRunner().invoke(main, ["codegen", "--smem-limit", "1024", "--dim", "16", "--config",
                                       '{"block_q": 16, "block_d": 16, "block_k": 16, "num_stages": 1}'])
    assert result.exit_code == 0 and "bq16-bdoc16-bk16-" in result.output.splitlines()[1], result.output


def test_tune_only_that_matches_nothing_is_refused_with_labels_it_takes(tmp_path):
    _refused(["tune", "--only", "nothing", "--only", "other", "--db", str(tmp_path / "t.db")], "--only",
             "no bucket's label contains 'nothing' or 'other'", "of the 4 buckets",
             "'colbert padded/fp16/dim128 nq1 lq32 nb1024 ld512 ragged'")
    assert list(tmp_path.iterdir()) == []


def test_tune_only_takes_the_shrunk_label_the_interpreter_prints(tmp_path, monkeypatch):
    # Without CUDA tune prints the shrunk buckets' labels; either label picks the bucket.
    import maxsim_forge.tuner as tuner
    from maxsim_forge.tuner import PRESETS

    monkeypatch.setattr("maxsim_forge.cli._tune.use_interpreter_without_cuda", lambda: True)
    picked = []

    def tune(buckets, **kwargs):
        picked.append(buckets)
        raise RuntimeError("stop here")

    monkeypatch.setattr(tuner, "tune", tune)
    colpali = PRESETS["quick"][1]
    for label in (colpali.label(), colpali.tiny().label()):
        result = CliRunner().invoke(main, ["tune", "--only", label, "--db", str(tmp_path / "t.db")])
        assert result.exit_code == 1 and "stop here" in result.output, result.output
    assert picked == [[colpali], [colpali]]


@pytest.mark.parametrize("dtype, dim, most", [("fp16", 5000, 3584), ("fp32", 1793, 1792)])
def test_warmup_refuses_a_bucket_whose_dim_the_kernels_do_not_take(dtype, dim, most):
    bucket = f'{{"layout": "padded", "dtype": "{dtype}", "dim": {dim}, "lq": 32, "ld": 300, "nb": 1000}}'
    _refused(["warmup", "--bucket", bucket], "--bucket", f"bucket 0: dim={dim}", f"({most})")
