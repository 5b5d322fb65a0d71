"""SB3 contract of the placement policies: shapes, the stored log-probability is that of the stored action, and
saving/loading keeps the density."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from agent_helpers import POLICIES, canvas_positions, observation, placement_spaces


def _batch(rng):
    obs = [observation(canvas_positions(k, rng), rng, max_atoms=8) for k in ("empty", "one", "two", "many")]
    return {k: np.concatenate([o[k] for o in obs]).astype(np.float32) for k in obs[0]}  # as SB3's buffer holds it


@pytest.mark.parametrize("agent", ["covariant", "internal"])
def test_forward_log_prob_is_that_of_the_stored_action(agent, tmp_path):
    obs_space, act_space = placement_spaces(8)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        policy = POLICIES[agent](obs_space, act_space, lambda _: 1e-3, seed=0)
    batch = _batch(np.random.default_rng(0))
    obs_t = {k: torch.as_tensor(v) for k, v in batch.items()}
    with torch.no_grad():
        actions, values, log_prob = policy(obs_t)
        assert actions.shape == (4, 4) and values.shape == (4, 1) and log_prob.shape == (4,)
        assert actions.dtype == torch.float32
        stored = torch.as_tensor(actions.numpy().astype(np.float32))  # the rollout buffer's copy
        values2, log_prob2, entropy = policy.evaluate_actions(obs_t, stored)
        assert entropy is None
        assert torch.allclose(log_prob, log_prob2, atol=1e-5) and torch.allclose(values, values2)
        assert torch.allclose(policy.predict_values(obs_t), values)
        # elements come from the bag, and the first atom's element too
        left = batch["bag"][np.arange(4), actions[:, 0].long().numpy()]
        assert (left > 0).all()
        greedy, _ = policy.predict(batch, deterministic=True)
        assert np.isfinite(greedy).all() and greedy.shape == (4, 4)

    path = tmp_path / "policy.pt"
    policy.save(str(path))
    loaded = POLICIES[agent].load(str(path))
    with torch.no_grad():
        assert torch.allclose(loaded.evaluate_actions(obs_t, stored)[1], log_prob2)


@pytest.mark.parametrize("agent", ["covariant", "internal"])
def test_log_prob_has_finite_gradients(agent):
    obs_space, act_space = placement_spaces(8)
    with torch.random.fork_rng():
        torch.manual_seed(1)
        policy = POLICIES[agent](obs_space, act_space, lambda _: 1e-3, seed=1)
    batch = _batch(np.random.default_rng(1))
    obs_t = {k: torch.as_tensor(v) for k, v in batch.items()}
    with torch.no_grad():
        actions, _, _ = policy(obs_t)
    values, log_prob, _ = policy.evaluate_actions(obs_t, actions)
    (log_prob.sum() + values.sum()).backward()
    grads = [p.grad for p in policy.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)


def test_spaces_are_checked():
    from gymnasium import spaces

    obs_space, act_space = placement_spaces(8)
    with pytest.raises(ValueError, match="Box\\(4,\\)"):
        POLICIES["internal"](obs_space, spaces.Box(-1, 1, (3,)), lambda _: 1e-3)
    with pytest.raises(ValueError, match="Dict observation"):
        POLICIES["internal"](spaces.Box(-1, 1, (3,)), act_space, lambda _: 1e-3)


def test_canvas_graph_is_every_pair_of_placed_atoms_within_the_cutoff_and_layers_sum_over_it():
    """The graph's edges are exactly the ordered pairs of distinct placed atoms closer than the cutoff (no padding,
    no far pair), and each interaction's message to an atom is the sum of its edges' messages."""
    from e3nn import o3

    from molgym.agents.common.layers import (
        CanvasGraph,
        EquivariantInteraction,
        InvariantInteraction,
        e3nn_without_torchscript,
    )

    torch.manual_seed(0)
    positions = torch.randn(3, 7, 3, dtype=torch.float64) * 2.0
    positions[1, 6] = 30.0  # beyond the cutoff of every other atom
    mask = torch.tensor([[1] * 7, [1] * 7, [1, 1, 1, 0, 0, 0, 0]], dtype=torch.bool)
    graph = CanvasGraph(positions, mask, cutoff=4.0, num_radial=6)
    expected = {(b * 7 + i, b * 7 + j) for b in range(3) for i in range(7) for j in range(7)
                if i != j and mask[b, i] and mask[b, j] and (positions[b, j] - positions[b, i]).norm() < 4.0}
    assert 0 < len(expected) < int(mask.sum(-1).pow(2).sum())  # padding and far pairs are left out
    assert set(zip(graph.receivers.tolist(), graph.senders.tolist())) == expected and len(graph.lengths) == len(expected)
    flat = positions.reshape(-1, 3)
    assert torch.allclose(graph.vectors, flat[graph.senders] - flat[graph.receivers])
    assert torch.all(graph.weights > 0) and torch.all(graph.weights <= 1)

    incidence = (graph.receivers[None, :] == torch.arange(21)[:, None]).double()  # (atoms, E): the sum as a product
    irreps = "8x0e + 4x1o + 4x2e"
    with e3nn_without_torchscript():
        layer = EquivariantInteraction(irreps, irreps, lmax_sh=2, num_radial=6).double()
    h = torch.randn(3, 7, o3.Irreps(irreps).dim, dtype=torch.float64)
    sh = o3.spherical_harmonics([0, 1, 2], graph.vectors, normalize=True, normalization="component")
    per_edge = layer.tp(h.reshape(21, -1)[graph.senders], sh, layer.radial(graph.radial)) * graph.weights[:, None]
    message = (incidence @ per_edge).reshape(3, 7, -1) / layer.avg_neighbours
    out = layer.gate(layer.lin_self(h) + layer.lin_msg(message))
    assert torch.allclose(layer(h, graph, sh), h + out if layer.residual else out, atol=1e-12)

    invariant = InvariantInteraction(channels=8, num_radial=6).double()
    x = h[..., :8]
    per_edge = invariant.filter(graph.radial) * graph.weights[:, None] * invariant.lin_in(x).reshape(21, -1)[graph.senders]
    message = (incidence @ per_edge).reshape(3, 7, -1) / invariant.avg_neighbours
    assert torch.allclose(invariant(x, graph), x + invariant.update(message), atol=1e-12)
