"""The `minillm` command line on small synthetic files."""
import subprocess
import sys

import pytest

from minillm.cli import main


def test_info_prints_hyperparameters_types_and_memory(synthetic_model, capsys):
    path = synthetic_model("tiny-qlora", "q8_0")
    assert main(["info", "-m", path, "-c", "1000"]) == 0
    out = capsys.readouterr().out
    assert "deepseek2" in out and "q_lora_rank 192" in out
    assert "Q8_0" in out and "F32" in out
    # latent cache: 4 layers x 1000 tokens x 576 values x 2 bytes for f16
    assert f"{4 * 1000 * 576 * 2 / 2**20:.1f} MiB" in out


def test_generate_is_deterministic_and_stops_at_n(synthetic_model, capsys):
    path = synthetic_model("tiny-qlora", "q8_0")
    args = ["generate", "-m", path, "-p", "Hello world", "-n", "3"]
    assert main(args) == 0
    first = capsys.readouterr().out
    assert main(args) == 0
    assert capsys.readouterr().out == first
    assert first.strip()


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
