"""The DPO-family losses against TRL's own code on fixed log-probs (skipped when trl is not installed).

TRL 1.x keeps its losses inside trainer methods, not free functions. `CPOTrainer.cpo_loss` and
`ORPOTrainer.odds_ratio_loss` read only a few attributes of their trainer, so they are called
here unbound, on a stand-in that has those attributes. CPO's sigmoid / hinge / ipo are DPO's
formulas with the reference folded into its inputs: given (log pi - log pi_ref) for the chosen
and the rejected answer they compute -log sigmoid(beta h) (with cDPO label smoothing), max(0,
1 - beta h) and (h - 1/(2 beta))^2, the expressions DPOTrainer._compute_loss also spells out
(which needs a model to call). Written against trl 1.16.
"""

from types import SimpleNamespace

import pytest
import torch

from whetstone.objectives.preference import LOSSES

pytest.importorskip("trl")

# Per-pair log-probs: sums for sigmoid / hinge, per-token means for ipo, simpo and orpo (as the registry says).
PI_C = [-12.0, -30.5, -7.25, -3.0]
PI_R = [-14.0, -29.0, -9.0, -3.5]
REF_C = [-13.0, -30.0, -8.0, -2.0]
REF_R = [-13.5, -30.0, -8.5, -4.0]
AVG_C = [-0.8, -1.6, -0.35, -2.2]  # mean log-prob per token: the odds P / (1 - P) need P = exp(avg) < 1
AVG_R = [-1.1, -1.5, -0.9, -2.0]


def _t(values):
    return torch.tensor(values, dtype=torch.float64)


def _trainer(**attributes):
    defaults = {"accelerator": SimpleNamespace(device=torch.device("cpu")), "alpha": 0.0, "simpo_gamma": 0.0,
                "label_smoothing": 0.0}
    return SimpleNamespace(**{**defaults, **attributes})


def _ours(name, chosen, rejected, ref_chosen, ref_rejected, beta, label_smoothing=0.0, margin=0.0):
    spec = LOSSES[name]
    refs = (None, None) if spec.reference_free else (_t(ref_chosen), _t(ref_rejected))
    return spec.fn(_t(chosen), _t(rejected), *refs, beta, label_smoothing, margin)


@pytest.mark.parametrize("name,beta,label_smoothing", [
    ("sigmoid", 0.1, 0.0), ("sigmoid", 0.5, 0.0), ("sigmoid", 0.1, 0.2),  # DPO, and cDPO
    ("hinge", 0.1, 0.0), ("hinge", 1.0, 0.0),
    ("ipo", 0.1, 0.0), ("ipo", 0.5, 0.0),
])
def test_reference_losses_match_trl(name, beta, label_smoothing):
    from trl.experimental.cpo import CPOTrainer

    chosen, rejected = (AVG_C, AVG_R) if name == "ipo" else (PI_C, PI_R)
    ref_chosen, ref_rejected = ([c + 0.25 * i for i, c in enumerate(AVG_C)], AVG_R) if name == "ipo" else (REF_C, REF_R)
    ours = _ours(name, chosen, rejected, ref_chosen, ref_rejected, beta, label_smoothing)
    trainer = _trainer(loss_type=name, beta=beta, label_smoothing=label_smoothing)
    theirs, _, _ = CPOTrainer.cpo_loss(trainer, _t(chosen) - _t(ref_chosen), _t(rejected) - _t(ref_rejected))
    torch.testing.assert_close(ours, theirs, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("beta,gamma", [(2.0, 0.5), (2.5, 1.0)])
def test_simpo_matches_trl(beta, gamma):
    from trl.experimental.cpo import CPOTrainer

    ours = _ours("simpo", AVG_C, AVG_R, None, None, beta, margin=gamma)
    trainer = _trainer(loss_type="simpo", beta=beta, simpo_gamma=gamma)
    theirs, _, _ = CPOTrainer.cpo_loss(trainer, _t(AVG_C), _t(AVG_R))
    torch.testing.assert_close(ours, theirs, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("lam", [0.1, 0.5])
def test_orpo_matches_trl(lam):
    """TRL returns lambda * log sigmoid(log odds ratio) and adds the chosen answer's NLL outside it."""
    from trl.experimental.orpo import ORPOTrainer

    ours = _ours("orpo", AVG_C, AVG_R, None, None, lam)
    ratio_term, _, _, _, _ = ORPOTrainer.odds_ratio_loss(_trainer(beta=lam), _t(AVG_C), _t(AVG_R))
    # TRL computes in float32 (it calls .float() on the log-probs).
    torch.testing.assert_close(ours.float(), -_t(AVG_C).float() - ratio_term, rtol=1e-6, atol=1e-6)
