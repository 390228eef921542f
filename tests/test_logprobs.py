"""The log-prob path: the temperature divided in place, the no-grad passes' default rows, and the chunked
LM head (`model.logprob_chunk`) against the whole logits: the same log-probs, entropies and gradients, on
one process and on two (FSDP2), and what each keeps alive."""

from __future__ import annotations

import copy
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch.testing import assert_close

from harness.algorithms.batch import TrainSettings
from harness.algorithms.chunked_head import chunked_head_refusal
from harness.algorithms.grpo import GRPO, GRPOConfig
from harness.algorithms.logprobs import (autocast, batched_logps, completion_logps, completion_logps_and_entropy,
                                         logprob_rows, selective_log_softmax)
from harness.config.schema import ModelConfig
from harness.measure.live_tensors import LiveTensors
from harness.train.models import char_tokenizer, tiny_model
from test_stack import assert_same_models, rollout_batch

VOCAB = 300  # rows of the LM head: more than the 16 characters, so that a chunk's logits weigh something


def padded_policy(dtype=torch.float32, vocab=VOCAB):
    torch.manual_seed(0)
    tokenizer = char_tokenizer("0123456789+-=")
    return tiny_model(ModelConfig(hidden_size=16, num_layers=2, num_heads=2, vocab_pad_to=vocab), tokenizer).to(dtype)


def logps_entropy_grads(model, batch, temperature, chunk, autocast_dtype=None, entropy_weight=0.3, logps_weight=1.0):
    """(log-probs, entropies, {parameter: gradient}) of a loss that weighs both, through one path."""
    model = copy.deepcopy(model)
    with autocast(model, autocast_dtype):
        logps, entropy = completion_logps(model, batch, temperature, entropy=True, chunk=chunk)
    weights = torch.randn(logps.shape, generator=torch.Generator().manual_seed(1), dtype=logps.dtype)
    loss = entropy_weight * entropy.sum() + (logps_weight * (logps * weights).sum() if logps_weight else 0)
    loss.backward()
    return logps.detach(), entropy.detach(), {n: p.grad for n, p in model.named_parameters()}


# ---------------------------------------------------------------- the temperature, in place

def test_dividing_in_place_gives_the_out_of_place_log_probs_and_gradients():
    # the update's logits are the LM head's matmul output, which autograd does not keep: dividing them in
    # place must leave the log-probs and every gradient of `logits / t` as they were, to the bit
    policy, temperature = padded_policy(), 0.7
    batch = rollout_batch(policy.double(), rows=4)
    policy = policy.float()
    reference = copy.deepcopy(policy)
    kept = torch.arange(batch.prompt_length - 1, batch.input_ids.shape[1] - 1)
    logits = reference(input_ids=batch.input_ids, attention_mask=batch.attention_mask, logits_to_keep=kept,
                       position_ids=(batch.attention_mask.cumsum(-1) - 1).clamp(min=0)).logits
    expected = selective_log_softmax(logits / temperature, batch.input_ids[:, batch.prompt_length:])
    expected.sum().backward()
    logps, _ = completion_logps(policy, batch, temperature)
    logps.sum().backward()
    assert torch.equal(logps, expected)
    for (name, a), b in zip(policy.named_parameters(), reference.parameters()):
        assert torch.equal(a.grad, b.grad), name


def test_dividing_in_place_keeps_one_copy_of_the_logits(monkeypatch):
    # a no-grad pass of 4 rows x 5 completion tokens x 4,096 vocabulary rows: the logits are 4*5*4096*4 =
    # 327,680 bytes, the largest tensor of the pass; `logits / t` holds a second copy at the pass's peak (less
    # the few KiB the in-place pass holds beside one copy at its own, later peak: the log-softmax's row temporaries)
    policy, temperature = padded_policy(vocab=4096), 0.7
    batch = rollout_batch(copy.deepcopy(policy).double(), rows=4, completion=5)

    def peak():
        live = LiveTensors(frozen=[policy])
        with live, live.phase("pass"), torch.no_grad():
            completion_logps(policy, batch, temperature)
        return live.step_peaks["pass"]["total"]

    in_place = peak()
    monkeypatch.setattr(torch.Tensor, "div_", torch.Tensor.div)  # the same pass, dividing out of place
    assert 0.98 * 4 * 5 * 4096 * 4 <= peak() - in_place <= 4 * 5 * 4096 * 4


# ---------------------------------------------------------------- the no-grad passes' rows

def test_no_grad_passes_default_to_the_updates_micro_batch():
    # rollout.logprob_batch_size when set; else optim.micro_batch_size; else the minibatch (16 rows / 2)
    assert logprob_rows(TrainSettings(logprob_batch_size=6, micro_batch_size=4, minibatches=2), 16) == 6
    assert logprob_rows(TrainSettings(micro_batch_size=4, minibatches=2), 16) == 4
    assert logprob_rows(TrainSettings(minibatches=2), 16) == 8
    assert logprob_rows(TrainSettings(minibatches=4), 2) == 1


def test_no_grad_passes_in_micro_batches_give_the_log_probs_of_one_pass():
    policy = padded_policy(torch.float64)
    batch = rollout_batch(policy, rows=8)
    whole = batched_logps(policy, batch, TrainSettings(logprob_batch_size=8))
    for settings in (TrainSettings(micro_batch_size=2), TrainSettings(minibatches=4), TrainSettings(logprob_chunk=3)):
        assert_close(batched_logps(policy, batch, settings), whole, atol=1e-12, rtol=0)


# ---------------------------------------------------------------- the chunked LM head

@pytest.mark.parametrize("temperature", [1.0, 0.7])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_chunked_head_gives_the_log_probs_entropies_and_gradients_of_the_whole_logits(dtype, temperature):
    # 6 rows x 5 tokens = 30 positions in chunks of 4 (the last one of 2); every parameter's gradient, the LM
    # head's (tied to the embedding) included, through the log-probs and an entropy term. Only the order of
    # the sums differs (the head's weight gradient summed chunk by chunk): a few units of the dtype's last
    # place of each parameter's largest gradient (fp32: 2^-23 = 1.2e-7, fp64: 2^-52 = 2.2e-16)
    policy = padded_policy(dtype)
    batch = rollout_batch(copy.deepcopy(policy).double(), rows=6)
    whole, chunked = (logps_entropy_grads(policy, batch, temperature, chunk) for chunk in (0, 4))
    places = 1e-6 if dtype == torch.float32 else 1e-14
    assert_close(chunked[0], whole[0], atol=places, rtol=0)
    assert_close(chunked[1], whole[1], atol=places * 10, rtol=0)  # entropies of about 5.7: a few ulps
    for name, grad in whole[2].items():
        assert (chunked[2][name] - grad).abs().max() <= places * grad.abs().max(), name


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_chunked_head_under_bf16_mixed_is_as_close_to_fp32_as_the_whole_logits(temperature):
    # bf16 compute over fp32 weights: the same bf16 logits, so the same log-probs and entropies to the bit.
    # Gradients carry bf16 rounding in both paths, differently placed (the whole logits' matmul rounds the
    # head's weight gradient to bf16 once; the chunked path sums it in fp32 chunk by chunk, as TRL does), and
    # it spreads through the body. Per parameter, relative to the fp32 gradient's norm: the two paths within
    # two bf16 steps (2^-7) of each other, and the chunked one no further from fp32 than the whole logits
    # are, give or take half of that (here the whole logits' own error is 0.3% to 1.2%)
    policy = padded_policy()
    batch = rollout_batch(copy.deepcopy(policy).double(), rows=6)
    exact = logps_entropy_grads(policy, batch, temperature, 0)
    whole, chunked = (logps_entropy_grads(policy, batch, temperature, chunk, torch.bfloat16) for chunk in (0, 4))
    assert torch.equal(chunked[0], whole[0]) and torch.equal(chunked[1], whole[1])
    for name, grad in exact[2].items():
        assert chunked[2][name].dtype == torch.float32
        size = grad.norm()
        assert (chunked[2][name] - whole[2][name]).norm() <= 2**-7 * size, name
        assert (chunked[2][name] - grad).norm() <= (whole[2][name] - grad).norm() + 2**-8 * size, name


@pytest.mark.parametrize("logps_weight, entropy_weight", [(1.0, 0.0), (0.0, 1.0)])
def test_chunked_head_gradients_of_the_log_probs_alone_and_of_the_entropy_alone(logps_weight, entropy_weight):
    policy = padded_policy(torch.float64)
    batch = rollout_batch(policy, rows=4)
    whole, chunked = (logps_entropy_grads(policy, batch, 0.7, chunk, entropy_weight=entropy_weight,
                                          logps_weight=logps_weight) for chunk in (0, 3))
    for name, grad in whole[2].items():
        assert (chunked[2][name] - grad).abs().max() <= 1e-14 * grad.abs().max(), name


def test_chunked_head_scores_the_same_positions_for_a_model_without_logits_to_keep():
    # a model whose forward computes every position: the swapped head picks the completion's own
    policy = padded_policy(torch.float64)
    batch = rollout_batch(policy, rows=4)
    expected = completion_logps(policy, batch, 0.7, entropy=True)
    policy._harness_logits_to_keep = False  # the cached answer to "does forward take logits_to_keep?"
    for chunk in (0, 3):
        logps, entropy = completion_logps(policy, batch, 0.7, entropy=True, chunk=chunk)
        assert_close(logps, expected[0], atol=1e-12, rtol=0)
        assert_close(entropy, expected[1], atol=1e-12, rtol=0)


def test_the_lm_head_is_restored_after_a_chunked_pass_even_when_it_fails():
    policy = padded_policy(torch.float64)
    head = policy.lm_head
    batch = rollout_batch(policy, rows=2)
    completion_logps(policy, batch, chunk=2)
    assert policy.lm_head is head
    batch.input_ids[0, -1] = VOCAB + 5  # a token past the vocabulary: the forward fails with the head swapped
    with pytest.raises((IndexError, RuntimeError)):
        completion_logps(policy, batch, chunk=2)
    assert policy.lm_head is head and policy.get_output_embeddings() is head


@pytest.mark.parametrize("entropy_coef", [0.0, 0.05])
@pytest.mark.parametrize("micro", [0, 2])
def test_an_update_through_the_chunked_head_is_the_update_through_the_whole_logits(entropy_coef, micro):
    # GRPO's whole update loop (2 minibatches, micro-batches, the KL term, an entropy bonus or none), float64
    results = []
    for chunk in (0, 3):
        policy = padded_policy(torch.float64)
        algorithm = GRPO(policy, GRPOConfig(), TrainSettings(lr=1e-3, micro_batch_size=micro, logprob_chunk=chunk,
                                                             entropy_coef=entropy_coef), seed=3)
        batch = rollout_batch(policy, rows=8)
        algorithm.prepare(batch)
        results.append((algorithm, {k: float(v) for k, v in algorithm.update(batch).items()}))
    assert_same_models(results[0][0], results[1][0])
    for key, value in results[0][1].items():
        assert results[1][1][key] == pytest.approx(value, abs=1e-9), key


def test_the_update_takes_the_entropys_gradient_only_with_a_bonus():
    policy = padded_policy(torch.float64)
    batch = rollout_batch(policy, rows=4)
    for coef in (0.0, 0.1):
        logps, entropy = completion_logps_and_entropy(policy, batch, TrainSettings(entropy_coef=coef, logprob_chunk=3))
        assert logps.requires_grad and entropy.requires_grad == bool(coef)


def test_the_chunked_head_keeps_no_logits_for_backward():
    # an update's forward on 8 rows x 5 tokens: the whole logits keep 8*5*300*4 = 48,000 bytes alive until
    # backward; chunks of 4 positions keep none of them, only per-position tensors of their own (the packed
    # log-probs and entropies, 8*5*2*4 = 320 bytes, and a copy of the targets, 8*5*8 = 320): under 1 KiB
    policy = padded_policy()
    batch = rollout_batch(copy.deepcopy(policy).double(), rows=8)
    logits_bytes = 8 * 5 * VOCAB * 4

    def kept(chunk):
        model = copy.deepcopy(policy).train()
        live = LiveTensors(trained=[model])
        with live:
            before = live.current()["total"]
            logps, _ = completion_logps_and_entropy(model, batch, TrainSettings(logprob_chunk=chunk))
            after = live.current()["total"]
            logps.sum().backward()
        return after - before

    assert logits_bytes - 1024 <= kept(0) - kept(4) <= logits_bytes


def test_models_that_scale_logits_after_the_head_are_refused_in_one_line(tmp_path):
    from transformers import Gemma2Config, Qwen2Config

    from harness import UserError
    from harness.config.schema import Config
    from harness.estimate.preflight import check_chunked_head
    assert chunked_head_refusal(Qwen2Config()) is None
    message = chunked_head_refusal(Gemma2Config(final_logit_softcapping=30.0))
    assert "final_logit_softcapping=30.0" in message and "model.logprob_chunk=0" in message
    assert "\n" not in message
    # before a run, from the model folder's config.json; with the chunked path off, nothing to refuse
    Gemma2Config(final_logit_softcapping=30.0).save_pretrained(tmp_path)
    check_chunked_head(Config(model=ModelConfig(name=str(tmp_path))))
    with pytest.raises(UserError, match="final_logit_softcapping"):
        check_chunked_head(Config(model=ModelConfig(name=str(tmp_path), logprob_chunk=8)))


# ---------------------------------------------------------------- FSDP2 on two processes

WORKER = Path(__file__).parent / "fsdp_logprobs_worker.py"


@pytest.mark.slow
@pytest.mark.parametrize("reshard_root", ["false", "true"])
def test_the_chunked_head_under_fsdp2_on_two_processes_gives_the_whole_logits_gradients(reshard_root):
    # the LM head's weight is a DTensor shard between forwards: the swapped head reads it gathered inside the
    # root's forward, and backward finds it gathered again whether or not the root reshards after forward
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
                             str(WORKER), reshard_root], capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("equal") == 2  # one line per rank
