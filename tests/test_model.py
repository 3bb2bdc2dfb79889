"""The GPT model: the chunked loss equals the plain one in value and gradients, and so do the model's two loss paths
(`model.loss: chunked | full`, μP included); GPT-2's init and weight tying, the optimizer's weight-decay groups, and
the FLOP count."""

import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F
from torch.profiler import profile

from train_core.model import GPT, GPTConfig, chunked_cross_entropy
from train_core.trainer import make_optimizer


def _inputs(n_rows, n_embd=16, vocab=100, seed=0):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(n_rows, n_embd, generator=g, requires_grad=True)
    weight = torch.randn(vocab, n_embd, generator=g, requires_grad=True)
    targets = torch.randint(vocab, (n_rows,), generator=g)
    return hidden, weight, targets


# 300 rows leave a 44-row last chunk; 256 split evenly; 64 rows fit in one chunk.
@pytest.mark.parametrize("n_rows", [300, 256, 64])
def test_chunked_cross_entropy_matches_full_logits_in_value_and_gradients(n_rows):
    hidden, weight, targets = _inputs(n_rows)
    loss = chunked_cross_entropy(hidden, weight, targets, chunk_rows=128)
    grad_hidden, grad_weight = torch.autograd.grad(loss, (hidden, weight))

    ref = F.cross_entropy(hidden @ weight.T, targets)
    ref_hidden, ref_weight = torch.autograd.grad(ref, (hidden, weight))

    torch.testing.assert_close(loss, ref)
    torch.testing.assert_close(grad_hidden, ref_hidden)
    torch.testing.assert_close(grad_weight, ref_weight)


@pytest.mark.parametrize("dtype, tol", [(torch.float32, 1e-5), (torch.bfloat16, 2e-2)])
def test_chunked_cross_entropy_of_a_wide_hidden_state_chunks_by_width_and_matches_full_logits(dtype, tol):
    """At C = 384 the default chunks are 512 rows (default_chunk_rows): 1,100 rows are two full chunks and a short
    one, through the reused low-precision buffers under bf16 autocast."""
    hidden, weight, targets = _inputs(1100, n_embd=384, vocab=500)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
        with profile() as prof:
            loss = chunked_cross_entropy(hidden, weight, targets)
        ref = F.cross_entropy((hidden @ weight.T).float(), targets)
    # Three matmuls a chunk (logits, hidden and weight gradients), all in the forward: 3 chunks, not 128-row chunks' 9.
    assert sum(e.count for e in prof.key_averages() if e.key in ("aten::mm", "aten::addmm_")) == 3 * 3
    for grad, ref_grad in zip(torch.autograd.grad(loss, (hidden, weight)), torch.autograd.grad(ref, (hidden, weight))):
        torch.testing.assert_close(grad, ref_grad, rtol=tol, atol=tol * ref_grad.abs().max().item())
    torch.testing.assert_close(loss, ref, rtol=tol, atol=0)


def test_chunked_cross_entropy_scales_gradients_by_the_upstream_gradient():
    hidden, weight, targets = _inputs(200)
    grads = torch.autograd.grad(3.0 * chunked_cross_entropy(hidden, weight, targets), (hidden, weight))
    refs = torch.autograd.grad(3.0 * F.cross_entropy(hidden @ weight.T, targets), (hidden, weight))
    for grad, ref in zip(grads, refs):
        torch.testing.assert_close(grad, ref)


def test_chunked_cross_entropy_under_no_grad_computes_only_the_loss():
    hidden, weight, targets = _inputs(300)  # 3 chunks of 128 rows
    with torch.no_grad(), profile() as prof:
        loss = chunked_cross_entropy(hidden, weight, targets, chunk_rows=128)
    torch.testing.assert_close(loss, F.cross_entropy(hidden @ weight.T, targets).detach())
    assert not loss.requires_grad
    # One logits matmul per chunk and no gradient matmuls: evaluation must not pay for a backward pass.
    matmuls = {e.key: e.count for e in prof.key_averages() if e.key in ("aten::mm", "aten::addmm_", "aten::matmul")}
    assert matmuls == {"aten::mm": 3}


def _loss_and_grads(config: GPTConfig, *, loss: str, dtype: torch.dtype) -> tuple[torch.Tensor, dict]:
    """The loss of one batch of 20 x 16 tokens (3 chunks of 128 rows, the last one short) and its gradients, from
    weights that depend on the seed only, computed along `loss`'s path."""
    torch.manual_seed(0)
    model = GPT(dataclasses.replace(config, loss=loss))
    g = torch.Generator().manual_seed(1)
    idx, targets = (torch.randint(config.vocab_size, (20, config.block_size), generator=g) for _ in range(2))
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
        value = model(idx, targets)
    value.backward()
    return value.detach(), {n: p.grad for n, p in model.named_parameters()}


TINY = GPTConfig(block_size=16, vocab_size=256, n_layer=2, n_head=2, n_embd=32)
# --- μP --- width multiplier 4 and α_out 2: the logits are multiplied by 0.5, which both paths must apply.
TINY_MUP = dataclasses.replace(TINY, parametrization="mup", mup_base_width=8, mup_output_alpha=2.0)


# Measured here: the paths differ by <= 2e-6 in the loss; gradients by <= 1e-6 (fp32) and <= 0.8% (bf16) of their
# norm, bf16 keeping 8 significant bits. Dropping the μP multiplier on one path moved its loss by 3e-3 and every
# gradient by about its own norm.
@pytest.mark.parametrize("dtype, grad_rtol", [(torch.float32, 1e-4), (torch.bfloat16, 5e-2)], ids=["fp32", "bf16"])
@pytest.mark.parametrize("config", [TINY, TINY_MUP], ids=["sp", "mup"])
def test_full_and_chunked_loss_paths_agree_in_loss_and_gradients(config, dtype, grad_rtol):
    chunked, chunked_grads = _loss_and_grads(config, loss="chunked", dtype=dtype)
    full, full_grads = _loss_and_grads(config, loss="full", dtype=dtype)
    assert full.item() == pytest.approx(chunked.item(), abs=1e-4)
    for name, grad in chunked_grads.items():
        assert (full_grads[name] - grad).norm() <= grad_rtol * grad.norm(), name


def test_auto_loss_on_a_cpu_is_the_chunked_path_bit_for_bit():
    auto, auto_grads = _loss_and_grads(TINY_MUP, loss="auto", dtype=torch.float32)
    chunked, chunked_grads = _loss_and_grads(TINY_MUP, loss="chunked", dtype=torch.float32)
    assert torch.equal(auto, chunked)
    assert all(torch.equal(auto_grads[name], grad) for name, grad in chunked_grads.items())


def test_fresh_full_vocab_model_starts_at_uniform_loss():
    torch.manual_seed(0)
    model = GPT(GPTConfig(block_size=32, n_layer=2, n_head=2, n_embd=32))
    idx = torch.randint(50257, (4, 32))
    targets = torch.randint(50257, (4, 32))
    with torch.no_grad():
        loss = model(idx, targets).item()
    assert loss == pytest.approx(math.log(50257), abs=0.1)


def test_weight_decay_applies_to_matrices_only(make_config):
    config = make_config()
    model = GPT(config.model)
    groups = make_optimizer(model, config, torch.device("cpu")).param_groups
    decayed = next(g for g in groups if g["weight_decay"] == 0.1)["params"]
    plain = next(g for g in groups if g["weight_decay"] == 0.0)["params"]
    assert all(p.dim() >= 2 for p in decayed) and all(p.dim() == 1 for p in plain)
    # Every parameter exactly once; the tied embedding/output matrix is one parameter.
    assert sorted(map(id, decayed + plain)) == sorted(map(id, model.parameters()))
    names = {id(p): n for n, p in model.named_parameters()}
    plain_names = {names[id(p)] for p in plain}
    assert "transformer.ln_f.weight" in plain_names and "transformer.h.0.attn.c_attn.bias" in plain_names
    assert {names[id(p)] for p in decayed} >= {"transformer.wte.weight", "transformer.h.1.mlp.c_fc.weight"}


def test_residual_projections_start_smaller_by_sqrt_of_twice_the_depth():
    torch.manual_seed(0)
    n_layer = 8
    model = GPT(GPTConfig(block_size=16, vocab_size=256, n_layer=n_layer, n_head=4, n_embd=128))
    residual = torch.cat([p.flatten() for n, p in model.named_parameters() if n.endswith("c_proj.weight")])
    others = torch.cat([p.flatten() for n, p in model.named_parameters()
                        if n.endswith(("c_attn.weight", "c_fc.weight"))])
    assert residual.std().item() == pytest.approx(0.02 / math.sqrt(2 * n_layer), rel=0.02)
    assert others.std().item() == pytest.approx(0.02, rel=0.02)
    assert model.transformer.h[0].attn.c_proj.bias.abs().max() == 0


def test_output_projection_is_the_token_embedding():
    torch.manual_seed(0)
    config = GPTConfig(block_size=16, vocab_size=256, n_layer=2, n_head=2, n_embd=32)
    model = GPT(config)
    vocab_shaped = [n for n, p in model.named_parameters() if p.shape == (config.padded_vocab_size, config.n_embd)]
    assert vocab_shaped == ["transformer.wte.weight"]  # no separate lm_head
    idx, targets = torch.randint(256, (2, 16)), torch.randint(256, (2, 16))
    with torch.no_grad():
        logits = model.hidden_states(idx) @ model.transformer.wte.weight.T  # (B, T, V)
        expected = F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1))
        torch.testing.assert_close(model(idx, targets), expected)
        # Changing a row of wte that no input uses still changes the loss: only the output projection reads it.
        unused = next(t for t in range(256) if t not in idx)
        model.transformer.wte.weight[unused] += torch.randn(config.n_embd)  # not a constant: ln_f output has mean 0
        assert model(idx, targets).item() != pytest.approx(expected.item(), abs=1e-4)


def test_flops_per_token_is_six_n_plus_attention():
    L, H, C, T, V = 3, 4, 64, 32, 256
    model = GPT(GPTConfig(block_size=T, vocab_size=V, n_layer=L, n_head=H, n_embd=C))
    # Counted from the architecture: per block c_attn 3C^2+3C, c_proj C^2+C, c_fc 4C^2+4C, mlp c_proj 4C^2+C, two
    # LayerNorms 4C; plus the tied embedding V*C and ln_f 2C (the position embedding is left out).
    n = L * (12 * C * C + 13 * C) + V * C + 2 * C
    assert model.num_params() == n
    assert model.flops_per_token() == 6 * n + 12 * L * C * T
