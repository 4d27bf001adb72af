"""`minillm bench --sweep` and `--vs-ik`: the sweep's schedule and rows, the rooflines' arithmetic,
the output formats, and the runner of a native ik build (through stand-in binaries that record
their arguments and print what ik's tools print)."""
from __future__ import annotations

import csv
import dataclasses
import io
import json
import os
import stat
import sys

import numpy as np
import pytest

import minillm
from minillm import bench, ik_native
from minillm import sweep as sw
from minillm.cli import main
from minillm.synthetic import default_model_path


@pytest.fixture(scope="module")
def model():
    return minillm.load(default_model_path(), n_ctx=128, n_ubatch=32, n_threads=2)


PEAKS = sw.Peaks(read_bw=20e9, gemm_ops=200e9, fma_flops=100e9, attn_flops=300e9, mha_flops=150e9, decode_attn_flops=180e9)


def test_sweep_fills_the_context_once(model):
    rows = list(sw.sweep_rows(model, n_gen=4))
    assert [r["n_kv"] for r in rows] == [0, 32, 64, 96]
    assert model.n_past == 128                       # the decode steps were dropped, the prompts kept
    for r in rows:
        assert set(sw.JSONL_KEYS) <= set(r)
        assert (r["pp"], r["tg"], r["n_ubatch"], r["n_kv_max"]) == (32, 4, 32, 128)
        assert r["speed_pp"] == pytest.approx(32 / r["t_pp"]) and r["speed_tg"] == pytest.approx(4 / r["t_tg"])


@pytest.mark.parametrize("kw", [dict(n_gen=0), dict(n_gen=33), dict(n_kv_max=256), dict(n_kv_max=16)])
def test_sweep_refuses_what_cannot_run(model, kw):
    with pytest.raises(ValueError):
        list(sw.sweep_rows(model, **{"n_gen": 4, **kw}))


def test_matmul_params_count_the_active_weights(model):
    """Against the hyperparameters: per layer q, kv_a, k_b, v_b, o; a dense FFN in the lead
    layers; router, n_used routed and the shared experts in the MoE layers."""
    c = model.config
    H, nope, rope, R, dv, E = c.n_head, c.qk_nope_head_dim, c.qk_rope_head_dim, c.kv_lora_rank, c.v_head_dim, c.n_embd
    attn = E * H * (nope + rope) + E * (R + rope) + H * nope * R + H * R * dv + H * dv * E
    dense = 3 * E * c.n_ff
    moe = E * c.n_expert + 3 * E * c.n_ff_exp * (c.n_expert_used + c.n_expert_shared)
    want = c.n_layer * attn + c.n_layer_dense_lead * dense + (c.n_layer - c.n_layer_dense_lead) * moe
    assert sw.matmul_params_per_token(model) == want


def test_attention_flops_count_every_key():
    class M:
        class config:
            n_layer, n_head, kv_lora_rank, qk_rope_head_dim = 2, 3, 8, 4

    keys = sum(10 + i + 1 for i in range(5))         # token i sees the 10 cached and i + 1 new keys
    assert sw.attention_flops(M, 10, 5) == 2 * 2 * 3 * (2 * 8 + 4) * keys


def test_rooflines(model):
    row = sw.add_rooflines({"n_kv": 64, "pp": 32, "tg": 8}, model, PEAKS)
    weights, total = bench.decode_bytes_per_token(model, 0), bench.decode_bytes_per_token(model, 68)
    cache_s = max((total - weights) / 20e9, sw.attention_flops(model, 68, 1) / 180e9)
    assert row["tg_roofline"] == pytest.approx(1 / (weights / 20e9 + cache_s))
    seconds = 2 * sw.matmul_params_per_token(model) * 32 / 200e9 + sw.attention_flops(model, 64, 32) / 300e9
    assert row["pp_roofline"] == pytest.approx(32 / seconds)
    # the TG roof again for another bandwidth, from the work the row keeps
    faster = dataclasses.replace(PEAKS, read_bw=40e9)
    cache_s = max((total - weights) / 40e9, sw.attention_flops(model, 68, 1) / 180e9)
    assert sw.tg_roofline(row, faster) == pytest.approx(1 / (weights / 40e9 + cache_s))


def test_pp_roofline_of_long_prompts_counts_the_decompressed_path(model):
    """A ubatch of mha_min_tokens() or more attends on decompressed rows (off the AMX level): every
    row through attn_kv_b at the GEMM peak, then 192-wide keys and 128-wide values at the decompressed
    attention's peak."""
    from minillm_kernels import attention

    c, n_kv, pp = model.config, 64, sw.mha_min_tokens(model.cache_type)
    row = sw.add_rooflines({"n_kv": n_kv, "pp": pp, "tg": 8}, model, PEAKS)
    keys = sum(n_kv + i + 1 for i in range(pp))
    gemm = 2 * c.n_layer * (n_kv + pp) * c.kv_lora_rank * c.n_head * (c.qk_nope_head_dim + c.v_head_dim)
    heads = 2 * c.n_layer * c.n_head * (c.qk_nope_head_dim + c.qk_rope_head_dim + c.v_head_dim) * keys
    attn_s = sw.attention_flops(model, n_kv, pp) / 300e9 if attention.amx_on() else gemm / 200e9 + heads / 150e9
    seconds = 2 * sw.matmul_params_per_token(model) * pp / 200e9 + attn_s
    assert row["pp_roofline"] == pytest.approx(pp / seconds)


def test_decode_attention_peak_runs_the_decode_kernel():
    """FLOPs over the fastest of the calls: positive and finite for every cache type."""
    for ct in ("f16", "q8_0"):
        peak = sw.decode_attention_peak(1, ct)
        assert 1e8 < peak < 1e14, (ct, peak)


def test_median_rows_pick_each_median():
    runs = [[{"n_kv": 0, "pp": 8, "tg": 2, "t_pp": t, "t_tg": u}] for t, u in ((1.0, 4.0), (3.0, 1.0), (2.0, 2.0))]
    (row,) = sw.median_rows(runs)
    assert (row["t_pp"], row["speed_pp"], row["t_tg"], row["speed_tg"]) == (2.0, 4.0, 2.0, 1.0)


def _rows(n=3, speed=10.0):
    return [{**dict.fromkeys(sw.JSONL_KEYS, 1), "n_kv": 512 * i, "pp": 512, "tg": 32, "t_pp": 512 / speed,
             "speed_pp": speed, "t_tg": 32 / speed, "speed_tg": speed, "tg_roofline": 4 * speed,
             "pp_roofline": 2 * speed} for i in range(n)]


INFO = {"model": "m.gguf", "cache_type": "f16", "n_threads": 2, "n_ubatch": 512, "n_ctx": 1536, "isa": "avx2",
        "commit": "abc", "openmp": "GOMP_SPINCOUNT=200000", "read_bw_gbs": 20.0, "gemm_peak_gops": 200.0,
        "fma_peak_gflops": 100.0, "attn_peak_gflops": 300.0, "mha_peak_gflops": 150.0, "decode_attn_peak_gflops": 180.0,
        "repetitions": 1, "peer": "version: 1 (x)"}


def test_sweep_outputs():
    ours, ik = _rows(speed=10.0), _rows(speed=8.0)
    out = io.StringIO()
    sw.write_sweep(ours, ik, INFO, "md", out)
    md = out.getvalue()
    assert "| PP | TG | N_KV | T_PP s | S_PP t/s | T_TG s | S_TG t/s |" in md
    assert "| 512 | 32 | 1024 |" in md and "| 1.25 | 1.25 |" in md and "40.0 (25%)" in md
    out = io.StringIO()
    sw.write_sweep(ours, ik, INFO, "jsonl", out)
    lines = [json.loads(x) for x in out.getvalue().splitlines()]
    assert [x["engine"] for x in lines] == ["minillm"] * 3 + ["ik_llama.cpp"] * 3
    assert all(set(sw.JSONL_KEYS) <= set(x) for x in lines)
    out = io.StringIO()
    sw.write_sweep(ours, None, INFO, "csv", out)
    table = list(csv.DictReader(io.StringIO(out.getvalue())))
    assert len(table) == 3 and float(table[1]["speed_pp"]) == 10.0
    out = io.StringIO()
    sw.write_sweep(ours, ik, INFO, "json", out)
    assert json.loads(out.getvalue())["info"]["isa"] == "avx2"


def test_plot(tmp_path):
    pytest.importorskip("matplotlib")
    path = tmp_path / "sweep.png"
    sw.plot_sweep(str(path), _rows(), _rows(speed=8.0), title="t")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# -- a native ik build, stood in for by scripts ---------------------------------------------

def _fake(tmp_path, name, body):
    path = tmp_path / name
    path.write_text(f"#!{sys.executable}\n{body}")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


SWEEP_SCRIPT = """import json, sys
a = sys.argv
open(a[0] + ".args", "w").write(json.dumps(a[1:]))
c, ub, n = int(a[a.index("-c") + 1]), int(a[a.index("-ub") + 1]), int(a[a.index("-n") + 1])
sys.stderr.write("llama_model_loader: noise\\n")
for kv in range(0, c, ub):
    sys.stderr.write(json.dumps({"n_kv_max": c, "n_ubatch": ub, "pp": ub, "tg": n, "n_kv": kv, "t_pp": 1.0,
                                 "speed_pp": float(ub), "t_tg": 1.0, "speed_tg": float(n)}) + "\\n")
"""

BENCH_SCRIPT = """import json, sys
a = sys.argv
open(a[0] + ".args", "w").write(json.dumps(a[1:]))
rows = [{"test": "pp64", "n_prompt": 64, "n_gen": 0, "avg_ts": 100.0, "stddev_ts": 1.0},
        {"test": "tg16", "n_prompt": 0, "n_gen": 16, "avg_ts": 50.0, "stddev_ts": 0.5},
        {"test": "tg16@pp128", "n_prompt": 128, "n_gen": 16, "avg_ts": 40.0, "stddev_ts": 0.5}]
print(json.dumps(rows))
"""


def test_ik_sweep_runner(tmp_path):
    exe = _fake(tmp_path, "llama-sweep-bench", SWEEP_SCRIPT)
    rows = ik_native.sweep(str(tmp_path), "m.gguf", 2048, 512, 32, 2, "q8_0")
    assert [r["n_kv"] for r in rows] == [0, 512, 1024, 1536]
    args = json.loads(open(str(exe) + ".args").read())
    for flag, value in (("-mla", "3"), ("-fa", "1"), ("-t", "2"), ("-ctk", "q8_0"), ("-ub", "512"), ("-c", "2048"),
                        ("-n", "32"), ("--output-format", "jsonl"), ("-m", "m.gguf")):
        assert args[args.index(flag) + 1] == value


def test_ik_bench_runner_and_ratio(tmp_path):
    exe = _fake(tmp_path / "", "llama-bench", BENCH_SCRIPT)
    (tmp_path / "bin").mkdir()
    os.rename(exe, tmp_path / "bin" / "llama-bench")
    peer = ik_native.bench(str(tmp_path), "m.gguf", [64], [16], [0, 128], 2, 2, "f16", 512)
    args = json.loads(open(str(tmp_path / "bin" / "llama-bench") + ".args").read())
    assert args[args.index("-p") + 1] == "64" and args[args.index("-gp") + 1] == "128,16"
    assert args[args.index("-r") + 1] == "2" and args[args.index("-o") + 1] == "json"
    row = bench.with_peer({"avg_ts": 60.0}, peer["tg16@pp128"])
    assert row["ik_ratio"] == pytest.approx(1.5) and bench.with_peer({"avg_ts": 1.0}, None)["ik_ratio"] is None


def test_ik_runner_errors(tmp_path):
    with pytest.raises(ValueError, match="llama-sweep-bench"):
        ik_native.find_binary(str(tmp_path), "llama-sweep-bench")
    _fake(tmp_path, "llama-sweep-bench", "import sys\nsys.stderr.write('bad model')\nsys.exit(3)\n")
    with pytest.raises(ValueError, match="bad model"):
        ik_native.sweep(str(tmp_path), "m.gguf", 1024, 512, 8, 2, "f16")


# -- the command line ----------------------------------------------------------------------------

def test_cli_sweep_bandwidth_is_the_median_of_its_readings(tmp_path, capsys, monkeypatch):
    """The read bandwidth is read at the start, after our run and after ik's: a transient
    reading (here the first) does not set the TG roof."""
    readings = iter([50e9, 20e9, 22e9])
    monkeypatch.setattr(bench, "read_bandwidth", lambda n_threads, nbytes=1 << 30, reps=5: next(readings))
    _fake(tmp_path, "llama-sweep-bench", SWEEP_SCRIPT)
    assert main(["bench", "--sweep", "-c", "96", "-ub", "32", "-n", "4", "-t", "2", "--vs-ik", str(tmp_path),
                 "-o", "json"]) == 0
    out = json.loads(capsys.readouterr().out)
    info = out["info"]
    assert info["read_bw_readings_gbs"] == [50.0, 20.0, 22.0] and info["read_bw_gbs"] == pytest.approx(22.0)
    peaks = sw.Peaks(read_bw=22e9, gemm_ops=1.0, fma_flops=1.0, attn_flops=1.0, mha_flops=1.0,
                     decode_attn_flops=info["decode_attn_peak_gflops"] * 1e9)
    for r in out["minillm"]:
        assert r["tg_roofline"] == pytest.approx(sw.tg_roofline(r, peaks))
        assert r["tg_roofline"] < sw.tg_roofline(r, dataclasses.replace(peaks, read_bw=50e9))


def test_cli_sweep_jsonl_with_a_peer(tmp_path, capsys):
    _fake(tmp_path, "llama-sweep-bench", SWEEP_SCRIPT)
    assert main(["bench", "--sweep", "-c", "96", "-ub", "32", "-n", "4", "-t", "2", "--bw-bytes", "64M",
                 "--vs-ik", str(tmp_path), "-o", "jsonl"]) == 0
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    ours = [x for x in lines if x["engine"] == "minillm"]
    assert [x["n_kv"] for x in ours] == [0, 32, 64] and all(x["tg_roofline"] > 0 for x in ours)
    assert [x["n_kv"] for x in lines if x["engine"] == "ik_llama.cpp"] == [0, 32, 64]


def test_cli_sweep_peer_cache_type(tmp_path, capsys):
    """--ik-cache-type gives the peer a cache type of its own (ours stays -ctk), and the header says so."""
    record_sweep_only = 'if "-ctk" in a: open(a[0] + ".args", "w")'   # not the --version call after it
    exe = _fake(tmp_path, "llama-sweep-bench", SWEEP_SCRIPT.replace('open(a[0] + ".args", "w")', record_sweep_only))
    assert main(["bench", "--sweep", "-c", "64", "-ub", "32", "-n", "4", "-t", "2", "--bw-bytes", "64M", "-ctk", "q8_KV",
                 "--vs-ik", str(tmp_path), "--ik-cache-type", "q8_0"]) == 0
    args = json.loads(open(str(exe) + ".args").read())
    assert args[args.index("-ctk") + 1] == "q8_0"
    out = capsys.readouterr().out
    assert "cache q8_KV" in out and "its cache q8_0, run alternately" in out


def test_cli_sweep_repetitions_alternate_which_engine_goes_first(tmp_path, capsys, monkeypatch):
    """-r 3 runs ours, ik, ik, ours, ours, ik: a drift of the machine's speed over the runs falls on
    both engines' medians alike."""
    log = tmp_path / "order.log"
    record = f'if "-ctk" in a: open({str(log)!r}, "a").write("ik\\n")'   # not the --version call
    _fake(tmp_path, "llama-sweep-bench", SWEEP_SCRIPT.replace('open(a[0] + ".args", "w").write(json.dumps(a[1:]))', record))
    sweep_rows = sw.sweep_rows

    def ours_then_log(*a, **kw):
        with open(log, "a") as f:
            f.write("ours\n")
        return sweep_rows(*a, **kw)

    monkeypatch.setattr(sw, "sweep_rows", ours_then_log)
    assert main(["bench", "--sweep", "-c", "64", "-ub", "32", "-n", "4", "-t", "2", "--bw-bytes", "64M", "-r", "3",
                 "--vs-ik", str(tmp_path), "-o", "json"]) == 0
    order = log.read_text().split()
    assert order == ["ours", "ik", "ik", "ours", "ours", "ik"]
    out = json.loads(capsys.readouterr().out)
    assert out["info"]["repetitions"] == 3 and len(out["info"]["read_bw_readings_gbs"]) == 7
    assert [r["n_kv"] for r in out["ik_llama.cpp"]] == [0, 32]


def test_cli_sweep_keeps_its_rows_when_the_peer_fails(tmp_path, capsys):
    """ik's sweep-bench aborting (as it does on a q8_KV cache) costs the ik columns, not our run."""
    _fake(tmp_path, "llama-sweep-bench", "import sys\nsys.stderr.write('GGML_ASSERT in concat')\nsys.exit(134)\n")
    assert main(["bench", "--sweep", "-c", "96", "-ub", "32", "-n", "4", "-t", "2", "--bw-bytes", "64M",
                 "--vs-ik", str(tmp_path), "-o", "json"]) == 0
    captured = capsys.readouterr()
    out = json.loads(captured.out)
    assert [r["n_kv"] for r in out["minillm"]] == [0, 32, 64] and out["ik_llama.cpp"] == []
    assert "GGML_ASSERT in concat" in out["info"]["peer_error"] and "minillm's rows only" in captured.err
    assert main(["bench", "--sweep", "-c", "64", "-ub", "32", "-n", "4", "-t", "2", "--bw-bytes", "64M",
                 "--vs-ik", str(tmp_path)]) == 0
    assert "peer failed, no ik columns: " in capsys.readouterr().out


def test_cli_bench_csv(capsys):
    assert main(["bench", "-p", "16", "-n", "4", "-r", "1", "-t", "2", "--bw-bytes", "64M", "-o", "csv"]) == 0
    table = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert [r["n_prompt"] for r in table] == ["16", "0"] and float(table[1]["avg_ts"]) > 0
    assert np.isfinite(float(table[1]["roofline_ts"]))
