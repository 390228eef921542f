"""Peaks of live tensors per phase: a hand-built case, and a real arm measured twice."""

import torch
from torch import nn

from harness.measure.live_tensors import LiveTensors, step_peak


def test_live_tensor_peaks_of_one_linear_layer_by_hand():
    torch.manual_seed(0)
    layer = nn.Linear(3, 2, bias=False)  # weight 2 x 3 fp32: 24 bytes
    optimizer = torch.optim.AdamW(layer.parameters())
    live = LiveTensors(trained=[layer], optimizers=[optimizer])
    peaks = []
    for _ in range(2):
        with live:
            with live.phase("forward"):
                x = torch.ones(4, 3)  # 48 bytes
                y = layer(x)  # 4 x 2: 32 bytes
                loss = y.sum()  # 4 bytes
            with live.phase("backward"):
                loss.backward()
            with live.phase("step"):
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
        peaks.append(live.step_peaks)
        del x, y, loss
    first, second = peaks
    # forward: weight 24 + x 48 + y 32 + loss 4 = 108, and nothing else is alive
    assert first["forward"] == {"total": 108, "params": 24, "activations": 84}
    # backward adds the seed gradient of the loss (4 bytes) and the weight's gradient (24, a temporary
    # until its hook files it as a gradient): 108 + 4 + 24 = 136
    assert first["backward"]["total"] == 136 and first["backward"]["temporaries"] == 24
    # the second step starts with AdamW's state: exp_avg 24 + exp_avg_sq 24 + a 4-byte step counter = 52
    assert second["forward"] == {"total": 108 + 52, "params": 24, "activations": 84, "optimizer": 52}
    assert step_peak(second) == (second["step"]["total"], "step")


def test_a_phase_keeps_its_own_peak_and_a_freed_tensor_leaves_it():
    live = LiveTensors()
    with live:
        with live.phase("big"):
            big = torch.zeros(1000)  # 4000 bytes, freed before the next phase
            del big
        with live.phase("small"):
            small = torch.zeros(10)  # 40 bytes
    assert live.step_peaks["big"]["total"] == 4000
    assert live.step_peaks["small"]["total"] == 40
    del small


def test_retagged_rollout_tensors_count_as_rollout():
    live = LiveTensors()
    with live:
        with live.phase("generate"):
            ids = torch.zeros(8, 4, dtype=torch.long)  # 256 bytes, made while generating: KV cache and ids
        live.retag_rollout([ids])
        with live.phase("update"):
            scratch = torch.zeros(16)  # 64 bytes of activations
    assert live.step_peaks["generate"] == {"total": 256, "kv_cache": 256}
    assert live.step_peaks["update"] == {"total": 320, "rollout": 256, "activations": 64}
    del ids, scratch


def test_optimizer_state_made_on_an_untracked_step_counts_on_a_tracked_one():
    torch.manual_seed(0)
    layer = nn.Linear(3, 2, bias=False)
    optimizer = torch.optim.AdamW(layer.parameters())
    live = LiveTensors(trained=[layer], optimizers=[optimizer])
    layer(torch.ones(4, 3)).sum().backward()  # the first step runs untracked (run.memory_every > 1)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    with live, live.phase("forward"):
        x = torch.ones(4, 3)
    # weight 24 + x 48 + AdamW's exp_avg 24, exp_avg_sq 24 and step 4 = 124
    assert live.step_peaks["forward"] == {"total": 124, "params": 24, "activations": 48, "optimizer": 52}
    del x
