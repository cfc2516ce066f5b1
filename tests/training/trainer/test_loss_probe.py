"""training.trainer.loss_probe: true vs shuffled actions at identical noise, the one probe of runs and small worlds."""
import pytest
import torch

from training.trainer.loss_probe import true_vs_shuffled

ACTIONS = [torch.tensor([float(i)]) for i in range(4)]


def test_a_loss_that_ignores_its_actions_scores_exactly_one():
    def loss(i, action):
        return torch.rand(()) + i  # noise only: the paired draws see the same stream
    result = true_vs_shuffled(loss, ACTIONS, draws=3)
    assert result["ratio"] == 1.0 and result["paired_diff"] == 0.0 and result["paired_diff_stderr"] == 0.0
    assert (result["samples"], result["timesteps"]) == (4, 3)


def test_a_loss_that_uses_its_actions_drops_below_one_and_pairs_share_noise():
    seen = []

    def loss(i, action):
        noise = torch.rand(())
        seen.append((i, float(noise)))
        return (action - i).abs().sum() + noise  # 0 with the item's own actions, >= 1 with another's
    result = true_vs_shuffled(loss, ACTIONS, draws=2, seed=5)
    assert result["ratio"] < 1 and result["loss_shuffled"] - result["loss_true"] == pytest.approx(1.5)
    assert [n for _, n in seen[0::2]] == [n for _, n in seen[1::2]]  # each true/shuffled pair: the same noise
    assert len({n for _, n in seen}) == len(seen) // 2  # and a new draw for every (item, draw)


def test_needs_two_items():
    with pytest.raises(ValueError, match="at least 2 items"):
        true_vs_shuffled(lambda i, a: torch.zeros(()), ACTIONS[:1])
