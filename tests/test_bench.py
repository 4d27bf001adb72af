"""`minillm bench` and minillm.bench on small synthetic files (no timing assertions)."""
import json
import statistics

import pytest

import minillm
from minillm import bench
from minillm.cli import main
from minillm.kv_cache import cache_row_bytes
from minillm.synthetic import CONFIGS

BENCH = ["-p", "16", "-n", "4", "-r", "2", "--bw-bytes", "1M"]


@pytest.fixture(scope="module")
def small(synthetic_model):
    """tiny-qlora's layers with a 512-token vocabulary and no tokenizer: quick to write and load."""
    return lambda **kw: synthetic_model(dict(CONFIGS["tiny-qlora"], n_vocab=512), "q8_0", tokenizer=False, **kw)


def _table_tests(markdown: str) -> list[str]:
    lines = [line for line in markdown.splitlines() if line.startswith("|")]
    column = [c.strip() for c in lines[0].split("|")].index("test")
    return [[c.strip() for c in line.split("|")][column] for line in lines[2:]]


def test_markdown_labels_tests_like_llama_bench(small, capsys):
    assert main(["bench", "-m", small(), *BENCH, "-d", "0", "8"]) == 0
    out = capsys.readouterr().out
    assert _table_tests(out) == ["pp16", "tg4", "pp16@pp8", "tg4@pp8"]
    header = out.splitlines()[0]
    for column in ("model", "size", "params", "backend", "threads", "type_k", "test", "t/s", "roofline"):
        assert f" {column} " in header
    assert "CPU (minillm)" in out and "GB/s" in out and "%)" in out


def test_json_has_llama_bench_fields_and_consistent_values(small, capsys):
    assert main(["bench", "-m", small(), *BENCH, "-d", "0,8", "-ctk", "q8_0", "-t", "1", "-o", "json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [(r["n_prompt"], r["n_gen"], r["n_depth"]) for r in rows] == [(16, 0, 0), (0, 4, 0), (16, 0, 8), (0, 4, 8)]
    for r in rows:
        for field in ("build_commit", "build_number", "cpu_info", "gpu_info", "model_filename", "model_type",
                      "model_size", "model_n_params", "n_batch", "n_ubatch", "n_threads", "type_k", "type_v",
                      "n_gpu_layers", "flash_attn", "test_time", "avg_ns", "stddev_ns"):
            assert field in r
        assert r["type_k"] == r["type_v"] == "q8_0" and r["n_threads"] == 1 and r["n_ubatch"] == 512
        assert len(r["samples_ts"]) == len(r["samples_ns"]) == 2
        assert r["avg_ts"] == pytest.approx(statistics.mean(r["samples_ts"]))
        assert r["stddev_ts"] == pytest.approx(statistics.stdev(r["samples_ts"]))
        n_tokens = r["n_prompt"] or r["n_gen"]
        for ns, ts in zip(r["samples_ns"], r["samples_ts"]):
            assert ts == pytest.approx(n_tokens / (ns * 1e-9), rel=1e-6)
        assert r["read_bw_gbs"] > 0
        decode = r["n_gen"] > 0
        assert (r["roofline_ts"] is not None) == decode and (r["bytes_per_token"] is not None) == decode
        if decode:
            assert r["roofline_ts"] == pytest.approx(r["read_bw_gbs"] * 1e9 / r["bytes_per_token"])


def test_jsonl_is_one_object_per_test(small, capsys):
    assert main(["bench", "-m", small(), "-p", "0", "-n", "2,3", "-r", "1", "--bw-bytes", "1M", "-o", "jsonl"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [bench.test_name(r) for r in rows] == ["tg2", "tg3"]
    assert rows[0]["stddev_ts"] == 0 and len(rows[0]["samples_ts"]) == 1


def _expected_weight_bytes(model) -> int:
    """From the file's tensor list: every block tensor (attn_kv_b only without attn_k_b/attn_v_b;
    routed experts scaled by n_expert_used/n_expert), output norm, output, one embedding row."""
    c, tensors = model.config, model.tensors
    names = set(tensors)
    total = tensors["output_norm.weight"].nbytes
    total += tensors.get("output.weight", tensors["token_embd.weight"]).nbytes
    total += tensors["token_embd.weight"].nbytes // c.n_vocab
    for name, t in tensors.items():
        if not name.startswith("blk."):
            continue
        blk = name.rsplit(".", 2)[0]
        if name.endswith("attn_kv_b.weight") and {f"{blk}.attn_k_b.weight", f"{blk}.attn_v_b.weight"} <= names:
            continue
        total += t.nbytes * c.n_expert_used // c.n_expert if "_exps." in name else t.nbytes
    return total


@pytest.mark.parametrize("kv_layout", ["k_b_v_b_2d", "kv_b"])
@pytest.mark.parametrize("cache_type", ["f16", "q8_0"])
def test_decode_bytes_per_token(small, kv_layout, cache_type):
    m = minillm.load(small(kv_layout=kv_layout), n_ctx=64, cache_type=cache_type, prepare=False)
    c = m.config
    assert c.n_expert_used < c.n_expert
    assert bench.decode_bytes_per_token(m, 0) == _expected_weight_bytes(m)
    row = cache_row_bytes(cache_type, c.kv_latent_dim)
    for depth in (1, 100):
        grown = bench.decode_bytes_per_token(m, depth) - bench.decode_bytes_per_token(m, 0)
        assert grown == depth * c.n_layer * row


def test_run_bench_rows_and_text_formats(small):
    m = minillm.load(small(), n_ctx=32, n_threads=1)
    rows = bench.run_bench(m, n_prompt=[8], n_gen=[0], depths=[0, 4], reps=1, read_bw=1e10)
    assert [bench.test_name(r) for r in rows] == ["pp8", "pp8@pp4"]
    assert all(r["read_bw_gbs"] == pytest.approx(10.0) for r in rows)
    assert json.loads(bench.format_rows(rows, "json")) == json.loads(json.dumps(rows))
    assert _table_tests(bench.format_rows(rows, "md")) == ["pp8", "pp8@pp4"]
    with pytest.raises(ValueError, match="n_ctx=32"):
        bench.run_bench(m, n_prompt=[32], n_gen=[0], depths=[8], read_bw=1e10)


def test_bad_input_is_a_clean_error(small, capsys):
    with pytest.raises(SystemExit) as e:
        main(["bench", "-m", small(), "-ctk", "q4_0"])
    assert e.value.code == 2 and "invalid choice: 'q4_0'" in capsys.readouterr().err
    for bad in (["-p", "x"], ["-n", "-3"], ["-r", "0"], ["-o", "sql"]):
        with pytest.raises(SystemExit) as e:
            main(["bench", "-m", small(), *bad])
        assert e.value.code == 2
    capsys.readouterr()
    assert main(["bench", "-m", small(), "-p", "0", "-n", "0"]) == 2
    assert "nothing to measure" in capsys.readouterr().err


def test_depth_is_filled_once_and_kept(small):
    """The depth context is evaluated once: repetitions and deeper tests reuse the cached prefix."""
    m = minillm.load(small(), n_ctx=64, n_threads=1)
    evaluated = []
    real_eval = m.eval
    m.eval = lambda ids, logits_all=True: (evaluated.append(len(ids)), real_eval(ids, logits_all))[1]
    bench.run_bench(m, n_prompt=[0], n_gen=[2], depths=[8, 20], reps=3, read_bw=1e10)
    # fills: 8 tokens, then the 12 more of depth 20; the rest are single decode tokens
    assert [n for n in evaluated if n > 1] == [8, 12]
    assert sum(n == 1 for n in evaluated) == 2 * (1 + 3 * 2)      # per test: warm-up 1 + 3 reps x 2
