import numpy as np
import pytest

from minillm.sampling import sample


def test_greedy_is_argmax():
    logits = np.array([0.1, 3.0, -2.0, 2.9], dtype=np.float32)
    assert sample(logits) == 1


def test_top_k_one_is_greedy_at_any_temperature():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=1000)
    for _ in range(20):
        assert sample(logits, temperature=5.0, top_k=1, rng=rng) == int(np.argmax(logits))


def test_temperature_sampling_follows_softmax():
    logits = np.log(np.array([0.5, 0.3, 0.2]))
    rng = np.random.default_rng(1)
    draws = [sample(logits, temperature=1.0, top_k=0, top_p=1.0, rng=rng) for _ in range(6000)]
    freq = np.bincount(draws, minlength=3) / len(draws)
    # binomial standard error at n=6000 is <= 0.0065; allow 4 sigma
    np.testing.assert_allclose(freq, [0.5, 0.3, 0.2], atol=0.026)


def test_top_p_drops_the_tail():
    logits = np.log(np.array([0.6, 0.3, 0.1]))
    rng = np.random.default_rng(2)
    draws = {sample(logits, temperature=1.0, top_k=0, top_p=0.8, rng=rng) for _ in range(500)}
    assert draws == {0, 1}


def test_non_finite_logits_are_rejected():
    with pytest.raises(ValueError):
        sample(np.array([0.0, np.nan]))
