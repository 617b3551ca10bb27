"""Property tests of the KD losses (as TRL's GKD loss tests)."""

import pytest
import torch
import torch.nn.functional as F

from splitkd_flwr.core.errors import ConfigError
from splitkd_flwr.split.loss import (
    IGNORE_INDEX,
    KDLoss,
    LossTerms,
    TopKTeacher,
    cross_entropy,
    forward_kl,
    generalized_jsd,
    reverse_kl,
    topk_divergence,
    topk_teacher,
)

B, T, V = 2, 5, 11


def _logits(scale: float = 3.0) -> torch.Tensor:
    return scale * torch.randn(B, T, V)


def _labels(masked: int = 2) -> torch.Tensor:
    labels = torch.randint(0, V, (B, T))
    labels[0, :masked] = IGNORE_INDEX  # padding at the start of the first row
    return labels


def _reference_kl(p_logits, q_logits, labels, temperature=1.0):
    """KL(p || q) with F.kl_div, averaged over unmasked tokens."""
    p_logp = F.log_softmax(p_logits / temperature, -1)
    q_logp = F.log_softmax(q_logits / temperature, -1)
    per_token = F.kl_div(q_logp, p_logp, reduction="none", log_target=True).sum(-1)
    mask = labels != IGNORE_INDEX
    return per_token[mask].mean()


@pytest.mark.parametrize("fn", [forward_kl, reverse_kl, generalized_jsd])
def test_zero_for_identical_logits(fn) -> None:
    # Prepare
    logits = _logits()

    # Execute
    value = fn(logits, logits.clone(), _labels())

    # Assert
    assert value.item() == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("temperature", [1.0, 2.5])
def test_kl_matches_f_kl_div(temperature: float) -> None:
    s, t, labels = _logits(), _logits(), _labels()

    fwd = forward_kl(s, t, labels, temperature=temperature)
    rev = reverse_kl(s, t, labels, temperature=temperature)

    torch.testing.assert_close(fwd, _reference_kl(t, s, labels, temperature))
    torch.testing.assert_close(rev, _reference_kl(s, t, labels, temperature))
    assert fwd.item() > 0 and rev.item() > 0 and fwd.item() != pytest.approx(rev.item())


def test_jsd_endpoints_are_the_kls() -> None:
    s, t, labels = _logits(), _logits(), _labels()

    at_zero = generalized_jsd(s, t, labels, beta=0.0)
    at_one = generalized_jsd(s, t, labels, beta=1.0)

    torch.testing.assert_close(at_zero, forward_kl(s, t, labels))
    torch.testing.assert_close(at_one, reverse_kl(s, t, labels))


def test_jsd_symmetric_at_half_and_bounded() -> None:
    s, t, labels = _logits(), _logits(), _labels()

    a = generalized_jsd(s, t, labels, beta=0.5)
    b = generalized_jsd(t, s, labels, beta=0.5)
    skewed = generalized_jsd(s, t, labels, beta=0.3)

    torch.testing.assert_close(a, b)
    assert 0.0 < a.item() <= torch.log(torch.tensor(2.0)).item()
    assert skewed.item() != pytest.approx(a.item())


def test_jsd_matches_hand_computation() -> None:
    s, t, labels = _logits(), _logits(), _labels(masked=0)
    beta = 0.3
    p_s, p_t = F.softmax(s, -1), F.softmax(t, -1)
    m = beta * p_t + (1 - beta) * p_s
    kl_t = (p_t * (p_t / m).log()).sum(-1)
    kl_s = (p_s * (p_s / m).log()).sum(-1)
    expected = (beta * kl_t + (1 - beta) * kl_s).mean()

    torch.testing.assert_close(generalized_jsd(s, t, labels, beta=beta), expected)


def test_masked_tokens_do_not_count() -> None:
    s, t, labels = _logits(), _logits(), _labels(masked=3)
    changed = s.clone()
    changed[0, :3] = 100.0 * torch.randn(3, V)  # only masked positions differ

    torch.testing.assert_close(forward_kl(changed, t, labels), forward_kl(s, t, labels))
    torch.testing.assert_close(cross_entropy(changed, labels), cross_entropy(s, labels))


@pytest.mark.parametrize("divergence", ["forward-kl", "reverse-kl", "jsd"])
def test_all_masked_gives_zero_and_finite_gradient(divergence: str) -> None:
    s = _logits().requires_grad_()
    labels = torch.full((B, T), IGNORE_INDEX)

    terms = KDLoss(alpha=0.5, divergence=divergence)(s, _logits(), labels)
    terms.loss.backward()

    assert terms.loss.item() == 0.0
    assert torch.isfinite(s.grad).all() and (s.grad == 0).all()


@pytest.mark.parametrize("divergence", ["forward-kl", "reverse-kl", "jsd"])
def test_neg_inf_logits_stay_finite(divergence: str) -> None:
    s, t = _logits(), _logits()
    s[..., -2:] = float("-inf")  # e.g. vocabulary entries masked out in both models
    t[..., -2:] = float("-inf")
    t[..., 0] = float("-inf")  # the teacher alone rules out a token
    s.requires_grad_()

    labels = _labels().clamp_max(V - 3)  # a label the student rules out is truly inf CE

    terms = KDLoss(alpha=0.3, divergence=divergence)(s, t, labels)
    terms.loss.backward()

    assert torch.isfinite(terms.loss) and terms.kd.item() > 0
    assert torch.isfinite(s.grad).all()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_inputs_match_fp32(dtype: torch.dtype) -> None:
    s, t, labels = 20.0 * _logits(), 20.0 * _logits(), _labels()
    s_half, t_half = s.to(dtype).requires_grad_(), t.to(dtype)

    terms = KDLoss(alpha=0.5, temperature=2.0, divergence="jsd")(s_half, t_half, labels)
    terms.loss.backward()
    expected = KDLoss(alpha=0.5, temperature=2.0, divergence="jsd")(
        s_half.detach().float(), t_half.float(), labels
    )

    assert terms.loss.dtype == torch.float32
    torch.testing.assert_close(terms.loss, expected.loss)
    assert torch.isfinite(s_half.grad.float()).all()


def test_kdloss_combines_terms_in_hinton_form() -> None:
    s, t, labels = _logits(), _logits(), _labels()
    alpha, temperature = 0.25, 2.0

    terms = KDLoss(alpha=alpha, temperature=temperature)(s, t, labels)

    assert isinstance(terms, LossTerms)
    expected_ce = F.cross_entropy(s.flatten(0, 1), labels.flatten())
    expected_kd = forward_kl(s, t, labels, temperature=temperature)
    torch.testing.assert_close(terms.ce, expected_ce)
    torch.testing.assert_close(terms.kd, expected_kd)
    torch.testing.assert_close(
        terms.loss, alpha * terms.ce + (1 - alpha) * temperature**2 * terms.kd
    )


def test_kdloss_alpha_one_is_plain_cross_entropy() -> None:
    s, t, labels = _logits(), _logits(), _labels()

    terms = KDLoss(alpha=1.0)(s, t, labels)

    torch.testing.assert_close(terms.loss, terms.ce)


@pytest.mark.parametrize(
    ("kwargs", "bad"),
    [
        ({"alpha": 1.5}, "1.5"),
        ({"alpha": -0.1}, "-0.1"),
        ({"temperature": 0.0}, "0.0"),
        ({"divergence": "wasserstein"}, "wasserstein"),
        ({"beta": 2.0}, "2.0"),
    ],
)
def test_bad_config_raises_config_error_naming_value(kwargs: dict, bad: str) -> None:
    with pytest.raises(ConfigError, match=bad):
        KDLoss(**kwargs)


@pytest.mark.parametrize("divergence", ["forward-kl", "reverse-kl", "jsd"])
def test_topk_with_full_vocab_equals_full_divergence(divergence: str) -> None:
    s, t, labels = _logits(), _logits(), _labels()
    s_full = s.clone().requires_grad_()
    s_topk = s.clone().requires_grad_()
    loss = KDLoss(alpha=0.0, temperature=1.5, divergence=divergence, beta=0.4)

    full = loss(s_full, t, labels).loss
    compressed = loss(s_topk, topk_teacher(t, V, temperature=1.5), labels).loss
    full.backward()
    compressed.backward()

    torch.testing.assert_close(compressed, full)
    torch.testing.assert_close(s_topk.grad, s_full.grad)


def test_topk_teacher_shapes_and_mass() -> None:
    t = _logits()
    k = 3

    teacher = topk_teacher(t, k, temperature=2.0)

    assert isinstance(teacher, TopKTeacher)
    assert teacher.logprobs.shape == (B, T, k) and teacher.ids.shape == (B, T, k)
    assert teacher.tail_logprob.shape == (B, T, 1)
    total = torch.cat([teacher.logprobs, teacher.tail_logprob], -1).exp().sum(-1)
    torch.testing.assert_close(total, torch.ones(B, T))
    expected_ids = (t / 2.0).topk(k, dim=-1).indices
    assert torch.equal(teacher.ids, expected_ids)


def test_topk_small_k_is_a_lower_bound_that_tightens() -> None:
    # Collapsing both distributions onto fewer buckets can only lose information
    # (data-processing inequality), so the top-k KL grows towards the full KL with k.
    s, t, labels = _logits(), _logits(), _labels()
    ks = (1, 4, 8, V)
    values = [topk_divergence(s, topk_teacher(t, k), labels).item() for k in ks]

    assert values == sorted(values)
    assert values[-1] == pytest.approx(forward_kl(s, t, labels).item(), rel=1e-5)


def test_topk_bad_k_raises() -> None:
    with pytest.raises(ConfigError, match=str(V + 1)):
        topk_teacher(_logits(), V + 1)


def test_pure_functions_check_their_arguments() -> None:
    s, t, labels = _logits(), _logits(), _labels()

    with pytest.raises(ConfigError, match="0.0"):
        forward_kl(s, t, labels, temperature=0.0)
    with pytest.raises(ConfigError, match="-0.5"):
        generalized_jsd(s, t, labels, beta=-0.5)
    with pytest.raises(ConfigError, match="hellinger"):
        topk_divergence(s, topk_teacher(t, 3), labels, divergence="hellinger")


def _one_sided_inf_logits() -> tuple[torch.Tensor, torch.Tensor]:
    s, t = _logits(), _logits()
    t[..., :3] = float("-inf")  # the teacher alone rules out three tokens
    s[..., 3] = float("-inf")  # the student alone rules out one
    s[..., -1] = float("-inf")  # both rule out the last
    t[..., -1] = float("-inf")
    return s, t


def _exact_jsd(s: torch.Tensor, t: torch.Tensor, beta: float) -> torch.Tensor:
    """Per-token generalized JSD in fp64 with 0 * log 0 = 0 (torch.xlogy)."""
    p_s, p_t = F.softmax(s.double(), -1), F.softmax(t.double(), -1)
    m = beta * p_t + (1 - beta) * p_s
    kl_t = (torch.xlogy(p_t, p_t) - torch.xlogy(p_t, m)).sum(-1)
    kl_s = (torch.xlogy(p_s, p_s) - torch.xlogy(p_s, m)).sum(-1)
    return beta * kl_t + (1 - beta) * kl_s  # (B, T)


@pytest.mark.parametrize("beta", [0.1, 0.5, 0.9])
def test_jsd_exact_with_one_sided_neg_inf(beta: float) -> None:
    s, t = _one_sided_inf_logits()
    labels = _labels(masked=0)
    s.requires_grad_()

    value = generalized_jsd(s, t, labels, beta=beta)
    value.backward()

    expected = _exact_jsd(s.detach(), t, beta).mean()
    torch.testing.assert_close(value.double(), expected, rtol=1e-5, atol=1e-6)
    assert torch.isfinite(s.grad).all()
    # The entries only one model rules out carry weight: leaving them out (the old
    # behaviour) gives a smaller value.
    both_finite = torch.isfinite(s) & torch.isfinite(t)
    dropped = _exact_jsd(
        s.detach().masked_fill(~both_finite, float("-inf")),
        t.masked_fill(~both_finite, float("-inf")),
        beta,
    ).mean()
    assert value.item() > dropped.item() * 1.01


@pytest.mark.parametrize("beta", [0.1, 0.5, 0.9])
def test_jsd_gradient_matches_exact_with_one_sided_neg_inf(beta: float) -> None:
    s, t = _one_sided_inf_logits()
    labels = _labels(masked=0)
    ours = s.clone().requires_grad_()
    # fp64 autograd cannot differentiate through a probability of exactly 0 (NaN);
    # a logit of -200 (probability ~1e-87) is that limit to far below fp32 precision.
    ref = s.double().nan_to_num(neginf=-200.0).requires_grad_()

    generalized_jsd(ours, t, labels, beta=beta).backward()
    _exact_jsd(ref, t.double().nan_to_num(neginf=-200.0), beta).mean().backward()

    finite = torch.isfinite(s)
    torch.testing.assert_close(
        ours.grad[finite].double(), ref.grad[finite], atol=1e-6, rtol=1e-4
    )
    assert (ours.grad[~finite] == 0).all()


def test_kl_where_exact_value_is_infinite_sums_the_shared_support() -> None:
    s, t = _one_sided_inf_logits()  # the student rules out a token the teacher keeps
    labels = _labels(masked=0)
    p_s, p_t = F.softmax(s.double(), -1), F.softmax(t.double(), -1)
    terms = torch.xlogy(p_t, p_t) - torch.xlogy(p_t, p_s)  # +inf where p_s = 0 < p_t
    assert torch.isinf(terms.sum(-1)).all()  # the exact forward KL is +inf

    value = forward_kl(s, t, labels)

    # Documented: the sum over the tokens both models can produce, not renormalised.
    shared = torch.isfinite(s) & torch.isfinite(t)
    expected = torch.where(shared, terms, torch.zeros_like(terms)).sum(-1).mean()
    torch.testing.assert_close(value.double(), expected, rtol=1e-5, atol=1e-6)
    # A token only the teacher rules out contributes exactly 0 to KL(t || s).
    assert reverse_kl(t, s, labels).item() == pytest.approx(value.item(), rel=1e-6)
