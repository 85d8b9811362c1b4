"""Each loss on fixed numbers equals its paper's formula computed by hand (plain `math`)."""

import math

import pytest
import torch

from whetstone.objectives.kto import kto_loss
from whetstone.objectives.preference import LOSSES, pair_metrics
from whetstone.objectives.reward import bradley_terry_loss

# Sequence log-probs of three pairs: policy chosen / rejected, reference chosen / rejected.
PI_C = [-12.0, -30.5, -7.25]
PI_R = [-14.0, -29.0, -9.0]
REF_C = [-13.0, -30.0, -8.0]
REF_R = [-13.5, -30.0, -8.5]


def _t(values):
    return torch.tensor(values, dtype=torch.float64)


def _h(i):
    return (PI_C[i] - REF_C[i]) - (PI_R[i] - REF_R[i])


def _log_sigmoid(x):
    return -math.log1p(math.exp(-x))


def _run(name, beta, label_smoothing=0.0, margin=0.0, pi_c=PI_C, pi_r=PI_R):
    spec = LOSSES[name]
    ref_c, ref_r = (None, None) if spec.reference_free else (_t(REF_C), _t(REF_R))
    return spec.fn(_t(pi_c), _t(pi_r), ref_c, ref_r, beta, label_smoothing, margin).tolist()


@pytest.mark.parametrize("beta", [0.1, 0.5])
def test_sigmoid_is_dpo(beta):
    expected = [-_log_sigmoid(beta * _h(i)) for i in range(3)]
    assert _run("sigmoid", beta) == pytest.approx(expected, rel=1e-12)


def test_label_smoothing_is_cdpo():
    beta, eps = 0.2, 0.1
    expected = [-(1 - eps) * _log_sigmoid(beta * _h(i)) - eps * _log_sigmoid(-beta * _h(i)) for i in range(3)]
    assert _run("sigmoid", beta, label_smoothing=eps) == pytest.approx(expected, rel=1e-12)


def test_ipo():
    beta = 0.1
    expected = [(_h(i) - 1 / (2 * beta)) ** 2 for i in range(3)]
    assert _run("ipo", beta) == pytest.approx(expected, rel=1e-12)
    assert LOSSES["ipo"].length_normalize  # per-token averages, as the IPO authors' results use


def test_hinge():
    beta = 1.0
    expected = [max(0.0, 1 - beta * _h(i)) for i in range(3)]
    assert _run("hinge", beta) == pytest.approx(expected, rel=1e-12)
    assert expected[0] == 0.0 and expected[1] > 0  # both sides of the hinge are exercised


def test_simpo_is_reference_free_with_target_margin():
    beta, gamma = 2.0, 0.5
    avg_c, avg_r = [-0.8, -1.2, -0.3], [-1.1, -0.9, -0.35]  # per-token averages
    expected = [-_log_sigmoid(beta * (avg_c[i] - avg_r[i]) - gamma) for i in range(3)]
    assert _run("simpo", beta, margin=gamma, pi_c=avg_c, pi_r=avg_r) == pytest.approx(expected, rel=1e-12)
    assert LOSSES["simpo"].reference_free and LOSSES["simpo"].length_normalize


def test_orpo_is_sft_plus_odds_ratio():
    lam = 0.25
    avg_c, avg_r = [-0.8, -1.2, -0.3], [-1.1, -0.9, -0.35]

    def log_odds(avg):
        p = math.exp(avg)
        return math.log(p / (1 - p))

    expected = [-avg_c[i] - lam * _log_sigmoid(log_odds(avg_c[i]) - log_odds(avg_r[i])) for i in range(3)]
    assert _run("orpo", lam, pi_c=avg_c, pi_r=avg_r) == pytest.approx(expected, rel=1e-9)
    assert LOSSES["orpo"].reference_free and LOSSES["orpo"].length_normalize


def test_registry_holds_the_family_and_every_loss_has_its_paper():
    assert set(LOSSES) == {"sigmoid", "ipo", "hinge", "simpo", "orpo"}
    for name, spec in LOSSES.items():
        assert "L =" in spec.fn.__doc__ and "20" in spec.fn.__doc__, f"{name}: docstring needs formula and paper"


def test_bradley_terry_with_margin():
    chosen, rejected = [1.5, -0.2, 0.3], [0.5, 0.4, 0.3]
    for m in (0.0, 0.7):
        expected = [-_log_sigmoid(c - r - m) for c, r in zip(chosen, rejected)]
        assert bradley_terry_loss(_t(chosen), _t(rejected), m).tolist() == pytest.approx(expected, rel=1e-12)


def test_kto_by_hand():
    beta, w_d, w_u = 0.1, 1.0, 1.5
    rewards, desirable, kl = [2.0, -1.0, 0.5, -3.0], [True, True, False, False], 0.4

    def sig(x):
        return 1 / (1 + math.exp(-x))

    expected = [w_d * (1 - sig(beta * (r - kl))) if d else w_u * (1 - sig(beta * (kl - r)))
                for r, d in zip(rewards, desirable)]
    out = kto_loss(_t(rewards), torch.tensor(desirable), torch.tensor(kl, dtype=torch.float64), beta, w_d, w_u)
    assert out.tolist() == pytest.approx(expected, rel=1e-12)
    # A negative KL estimate is clamped to 0 (z0 = max(0, KL)).
    clamped = kto_loss(_t(rewards), torch.tensor(desirable), torch.tensor(-2.0, dtype=torch.float64), beta, w_d, w_u)
    zero = kto_loss(_t(rewards), torch.tensor(desirable), torch.tensor(0.0, dtype=torch.float64), beta, w_d, w_u)
    assert torch.equal(clamped, zero)


def test_pair_metrics_are_sums_with_ties_as_half():
    m = pair_metrics(torch.tensor([1.0, 0.0, -1.0]), torch.tensor([0.0, 0.0, 2.0]))
    assert m == {"rewards/chosen": 0.0, "rewards/rejected": 2.0, "margin": -2.0, "accuracy": 1.5}
