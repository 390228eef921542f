"""The `trl-grpo` arm's settings: our config mapped onto TRL's `GRPOConfig`, every field that matters set
explicitly, and what could not be matched said in words (saved in the arm's config.yaml, `derived.trl`).

TRL's batch vocabulary, for one rollout of `rollout.batch_size` completions:
  per_device_train_batch_size  rows per forward/backward (our micro-batch, or the whole minibatch)
  gradient_accumulation_steps  micro-batches per optimizer step (rows per minibatch / micro rows)
  steps_per_generation         micro-batches per rollout (generation_batch_size = batch_size)
  num_iterations               passes over each rollout (our epochs)
so the optimizer steps per rollout are steps_per_generation * num_iterations / gradient_accumulation_steps
= minibatches * epochs, as in our arms, and `max_steps` counts optimizer steps.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

# Our aggregation of the per-token loss -> TRL's loss_type (GRPOConfig defaults to "dapo").
LOSS_TYPES = {"sequence": "grpo", "token": "bnpo"}
TRL_STD_EPS = 1e-4  # TRL adds this to the group std, fixed


@dataclass
class TRLSettings:
    grpo_config: dict[str, Any]  # keyword arguments of trl.GRPOConfig
    optimizer_steps_per_rollout: int
    not_matched: list[str] = field(default_factory=list)  # in words, for config.yaml and the report


def check_trl_options(algo: str, options) -> None:
    """One line for an option TRL's GRPOTrainer has no setting for (before any folder is written)."""
    from harness import UserError
    if options.kl_reward_coef > 0:
        raise UserError(f"TRL's GRPOTrainer ({algo}) has no KL term in the reward (algorithms.grpo.kl_reward_coef="
                        f"{options.kl_reward_coef}); use --kl loss, off or native for a comparison with {algo}")
    if options.aggregation not in LOSS_TYPES:
        raise UserError(f"TRL's GRPOTrainer ({algo}) has no loss_type for aggregation '{options.aggregation}'; "
                        f"use one of: {', '.join(LOSS_TYPES)}")


def trl_settings(config, options) -> TRLSettings:
    """GRPOConfig keywords for `config` (a harness Config) and `options` (GRPO's typed options)."""
    rollout, optim, run = config.rollout, config.optim, config.run
    minibatch = rollout.batch_size // optim.minibatches
    micro = optim.micro_batch_size or minibatch
    steps_per_rollout = optim.minibatches * optim.epochs
    kwargs: dict[str, Any] = dict(
        # the batch: one rollout of batch_size completions, minibatches * epochs optimizer steps on it
        per_device_train_batch_size=micro, gradient_accumulation_steps=minibatch // micro,
        steps_per_generation=rollout.batch_size // micro, num_iterations=optim.epochs,
        max_steps=config.total_steps() * steps_per_rollout, num_generations=rollout.samples_per_prompt,
        shuffle_dataset=False,  # the dataset is already in our prompt order
        # sampling: only these. load_policy hides the model's own generation_config (pad, eos and bos
        # only), so nothing else reaches generate: no extra logits processor, not even a no-op one
        max_completion_length=rollout.max_new_tokens, temperature=rollout.temperature, top_p=rollout.top_p,
        top_k=0, min_p=None, repetition_penalty=1.0, generation_kwargs=None,
        # the optimizer: AdamW with torch's defaults, constant learning rate (Trainer decays it linearly by default)
        learning_rate=optim.lr, lr_scheduler_type="constant", warmup_steps=0, weight_decay=optim.weight_decay,
        optim="adamw_torch", adam_beta1=0.9, adam_beta2=0.999, adam_epsilon=1e-8, max_grad_norm=optim.max_grad_norm,
        # the loss: GRPO's clipped surrogate plus beta * k3 KL (TRL defaults: beta 0, loss_type "dapo")
        beta=options.beta, epsilon=options.eps_low, epsilon_high=options.eps_high, delta=None,
        loss_type=LOSS_TYPES[options.aggregation], scale_rewards=options.scale, importance_sampling_level="token",
        mask_truncated_completions=False, top_entropy_quantile=1.0, entropy_coef=optim.entropy_coef,
        use_bias_correction_kl=False, off_policy_mask_threshold=None, sync_ref_model=False, disable_dropout=False,
        # precision and memory (GRPOConfig defaults: bf16=True, gradient_checkpointing=True, renamed
        # activation_checkpointing in transformers 5)
        bf16=config.model.precision == "bf16-mixed", fp16=False, cast_lm_head_to_fp32=False,
        activation_checkpointing=config.model.gradient_checkpointing,
        gradient_checkpointing=config.model.gradient_checkpointing,
        activation_checkpointing_kwargs={"use_reentrant": False},  # as our models.enable_gradient_checkpointing
        # the run: our seed, our device, no TRL logging, checkpoints or evaluation of its own
        seed=run.seed, data_seed=run.seed, use_cpu=run.device == "cpu", report_to="none", logging_steps=1,
        save_strategy="no", eval_strategy="no", disable_tqdm=True, log_completions=False,
        remove_unused_columns=False, dataloader_num_workers=0,
    )
    return TRLSettings(kwargs, steps_per_rollout, not_matched(config, options, micro, minibatch))


def not_matched(config, options, micro: int, minibatch: int) -> list[str]:
    """What TRL does differently from our GRPO arm under these settings, each in one sentence."""
    notes = []
    if config.optim.minibatches * config.optim.epochs == 1:
        notes.append("old log-probs: with one optimizer step per rollout TRL skips the no-grad old-log-prob "
                     "forward and takes the ratio against the detached current log-probs (the same values); "
                     "our arm runs that forward")
    if config.optim.minibatches > 1:
        notes.append("minibatch rows: TRL shuffles the rollout with the global torch generator and splits it in "
                     "order; our arm draws its partition from its own generator (same sizes, other rows)")
    if options.std_eps != TRL_STD_EPS:
        notes.append(f"std_eps: TRL adds {TRL_STD_EPS} to the group std, fixed; ours is {options.std_eps}")
    if options.aggregation == "token" and micro < minibatch:
        notes.append("token aggregation: TRL's bnpo divides by the tokens of each micro-batch, ours by the "
                     "tokens of the minibatch")
    if config.optim.entropy_coef and options.aggregation != "token":
        notes.append("entropy bonus: TRL takes the token mean of each micro-batch's entropy; ours aggregates it "
                     f"like the loss ({options.aggregation})")
    if config.rollout.logprob_batch_size not in (0, micro):  # 0: our micro-batch too
        notes.append(f"no-grad log-prob passes: TRL runs them {micro} rows at a time (its micro-batch); ours "
                     f"{config.rollout.logprob_batch_size}")
    if config.model.precision == "bf16-mixed":
        notes.append("bf16-mixed: TRL samples in fp32 (its autocast covers the loss only) and keeps the reference "
                     "in the policy's fp32 weights; ours samples under bf16 autocast and stores the reference in bf16")
    notes.append("log-prob head: TRL's fused LM head scores every position (prompt included) in vocabulary "
                 "chunks of 32,768 and recomputes them in backward; our arm projects the completion positions")
    notes.append("statistics TRL does not compute: loss/policy_loss (logged only with an entropy bonus) and "
                 "loss/approx_kl (KL to the sampling policy)")
    return notes
