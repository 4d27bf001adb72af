"""The `minillm` command line on small synthetic files."""
import subprocess
import sys

import pytest

import minillm
from minillm.cli import main


def test_info_prints_hyperparameters_types_and_memory(synthetic_model, capsys):
    path = synthetic_model("tiny-qlora", "q8_0")
    assert main(["info", "-m", path, "-c", "1000"]) == 0
    out = capsys.readouterr().out
    assert "deepseek2" in out and "q_lora_rank 192" in out
    assert "Q8_0" in out and "F32" in out
    # latent cache: 4 layers x 1000 tokens x 576 values x 2 bytes for f16
    assert f"{4 * 1000 * 576 * 2 / 2**20:.1f} MiB" in out
    assert "prepared weights:" in out and "of mapped file pages" in out


def test_generate_is_deterministic_and_prints_timings(synthetic_model, capsys):
    path = synthetic_model("tiny-qlora", "q8_0")
    args = ["generate", "-m", path, "-p", "Hello world", "-n", "3", "--temp", "0.8", "--seed", "7",
            "-c", "64", "-ctk", "q8_0"]
    assert main(args) == 0
    first = capsys.readouterr()
    assert main(args) == 0
    assert capsys.readouterr().out == first.out
    assert first.out.strip()
    assert "prompt eval time" in first.err and "eval time" in first.err
    assert "/     2 runs" in first.err  # the first of 3 tokens comes from the prompt's prefill


def test_generate_text_on_a_loaded_model_fills_stats(synthetic_model, monkeypatch):
    from minillm.generate import GenerationStats, generate_text
    m = minillm.load(synthetic_model("tiny-qlora", "q8_0"), n_ctx=32)
    stats = GenerationStats()
    text = "".join(generate_text(m, "Hello world", max_tokens=4, stats=stats))
    assert text and stats.n_generated == 4 and stats.n_eval == 3
    assert stats.n_prompt == len(m.tokenize("Hello world"))
    assert stats.total_s >= stats.prompt_s + stats.eval_s > 0
    monkeypatch.setattr(m.tokenizer, "is_eog", lambda tid: True)
    stats = GenerationStats()
    assert "".join(generate_text(m, "Hello world", max_tokens=4, stats=stats)) == ""
    assert stats.n_generated == 0 and stats.n_eval == 0
    with pytest.raises(ValueError, match="exceeds n_ctx=32"):
        next(generate_text(m, "Hello world", max_tokens=30))


def test_bad_file_is_a_clean_error(tmp_path, capsys):
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGUF" + b"\x00" * 100)
    assert main(["info", "-m", str(bad)]) == 2
    assert "error" in capsys.readouterr().err


def test_python_dash_m_entry_point():
    r = subprocess.run([sys.executable, "-m", "minillm", "--help"], capture_output=True, text=True)
    assert r.returncode == 0 and "generate" in r.stdout and "bench" in r.stdout


def test_over_long_prompt_is_rejected(synthetic_model):
    from minillm.generate import generate_text
    path = synthetic_model("tiny-qlora", "q8_0")
    with pytest.raises(ValueError, match="exceeds"):
        next(generate_text(path, "x", max_tokens=10**7))


def test_generate_beyond_the_context_is_a_clean_error(synthetic_model, capsys):
    path = synthetic_model("tiny-qlora", "q8_0")
    assert main(["generate", "-m", path, "-p", "Hello world", "-n", "100", "-c", "16"]) == 2
    assert "exceeds n_ctx=16" in capsys.readouterr().err
