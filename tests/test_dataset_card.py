"""Dataset cards hold the right numbers; the CLI refuses a corrupted vault without touching it."""

from __future__ import annotations

import contextlib
import hashlib
import io
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest
from flashbax.buffers.trajectory_buffer import TrajectoryBufferState
from flashbax.vault import Vault

from offmarl.cli import main
from offmarl.data.card import dataset_stats, write_dataset_card
from offmarl.data.dataset import OfflineDataset
from offmarl.data.vault import write_vault

# Three episodes of two agents and three actions, returns 1.5 (won), 0.4 and 1.5 (won).
TEAM_REWARDS = [0.3, 1.2, 0.1, 0.1, 0.2, 1.5]
ENDS = [1, 4, 5]
ACTIONS = [[0, 1], [1, 1], [2, 1], [2, 1], [0, 1], [1, 1]]
PROVENANCE = {"env": "smax:3m", "source_run": "runs/x", "checkpoint_env_steps": 123, "epsilon": 0.1}


def small_dataset() -> OfflineDataset:
    t, n, a = len(TEAM_REWARDS), 2, 3
    terminals = np.zeros((t, n), np.float32)
    terminals[ENDS] = 1.0
    return OfflineDataset(
        observations=np.arange(t * n * 4, dtype=np.float32).reshape(t, n, 4),
        actions=np.array(ACTIONS, np.int32),
        rewards=np.repeat(np.array(TEAM_REWARDS, np.float32)[:, None], n, axis=1),
        terminals=terminals,
        truncations=np.zeros((t, n), np.float32),
        states=np.zeros((t, 5), np.float32),
        legals=np.ones((t, n, a), np.float32),
    )


def test_card_holds_the_right_numbers(tmp_path: Path) -> None:
    vault = tmp_path / "smax_3m.vlt"
    write_vault(small_dataset(), vault, "good", PROVENANCE)
    card = write_dataset_card(vault, "good", tmp_path / "cards")
    assert card == tmp_path / "cards" / "good.md"
    text = card.read_text()
    returns = np.array([1.5, 0.4, 1.5])
    for row in [
        "| episodes | 3 |",
        "| transitions | 6 |",
        f"| return, mean ± std | {returns.mean():.3f} ± {returns.std():.3f} |",
        "| return, min / max | 0.400 / 1.500 |",
        "| episode length, mean | 2.0 |",
        "| win rate | 0.667 |",
        "Win rate: SMAX episodes whose last team reward is >= 1.",
        "| agents / obs dim / state dim / actions | 2 / 4 / 5 / 3 |",
        "| 0 | 0.333 | 0.333 | 0.333 |",
        "| 1 | 0.000 | 1.000 | 0.000 |",
        "| source_run | runs/x |",
        "| checkpoint_env_steps | 123 |",
        "| epsilon | 0.1 |",
        "![return histogram](good_returns.png)",
    ]:
        assert row in text, row
    assert (tmp_path / "cards" / "good_returns.png").read_bytes().startswith(b"\x89PNG")


def test_stats_without_a_win_condition_and_default_location(tmp_path: Path) -> None:
    stats = dataset_stats(small_dataset(), "mpe:simple_spread")
    assert stats["win_rate"] is None and stats["episodes"] == 3
    assert stats["return_max"] == pytest.approx(1.5)
    vault = tmp_path / "mpe.vlt"
    write_vault(small_dataset(), vault, "replay", {"env": "mpe:simple_spread"})
    card = write_dataset_card(vault, "replay")
    assert card == vault / "replay.md"
    assert "| win rate | n/a" in card.read_text()


def test_cli_writes_a_card_for_every_uid(tmp_path: Path, capsys) -> None:
    vault = tmp_path / "smax_3m.vlt"
    for uid in ("good", "poor"):
        write_vault(small_dataset(), vault, uid, PROVENANCE)
    assert main(["dataset-card", str(vault), "--out", str(tmp_path / "cards")]) == 0
    assert sorted(p.name for p in (tmp_path / "cards").iterdir()) == [
        "good.md", "good_returns.png", "poor.md", "poor_returns.png"
    ]
    assert capsys.readouterr().out.count(".md") == 2


def nan_vault(root: Path) -> None:
    """An OG-MARL-layout vault, built with flashbax, whose rewards hold a NaN."""
    data = small_dataset()
    rewards = data.rewards.copy()
    rewards[2, 0] = np.nan
    experience = {
        "observations": data.observations[None], "actions": data.actions[None],
        "rewards": rewards[None], "terminals": data.terminals[None],
        "truncations": data.truncations[None],
        "infos": {"state": data.states[None], "legals": data.legals[None]},
    }
    state = TrajectoryBufferState(experience=experience, current_index=jnp.asarray(len(rewards)),
                                  is_full=jnp.asarray(False))
    with contextlib.redirect_stdout(io.StringIO()):
        Vault(root.name, experience_structure=experience, rel_dir=str(root.parent),
              vault_uid="good").write(state)


def file_hashes(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("suffix", [":good", ""])
def test_cli_on_a_corrupted_vault_is_one_line_exit_2_and_changes_nothing(
    tmp_path: Path, capsys, suffix: str
) -> None:
    vault = tmp_path / "bad.vlt"
    nan_vault(vault)
    before = file_hashes(tmp_path)
    assert main(["dataset-card", f"{vault}{suffix}"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert err.startswith("offmarl: error: vault ") and "'rewards' holds NaN or inf" in err
    assert file_hashes(tmp_path) == before


def test_cli_on_a_missing_vault(tmp_path: Path, capsys) -> None:
    assert main(["dataset-card", str(tmp_path / "nope.vlt")]) == 2
    assert "is not a vault" in capsys.readouterr().err
    assert main(["dataset-card", f"{tmp_path / 'nope.vlt'}:good"]) == 2
    assert "does not exist" in capsys.readouterr().err


def box_dataset() -> OfflineDataset:
    """small_dataset's episodes with 2-dimensional box actions and no masks."""
    data = small_dataset()
    t = data.num_transitions
    agent0 = np.stack([np.linspace(0.0, 1.0, t), np.full(t, 0.25)], axis=-1)
    agent1 = np.stack([np.full(t, 0.5), np.tile([0.0, 1.0], t // 2)], axis=-1)
    return data._replace(actions=np.stack([agent0, agent1], axis=1).astype(np.float32),
                         legals=np.zeros((t, 2, 0), np.float32))


def test_card_of_a_continuous_vault_gives_action_means_and_stds(tmp_path: Path) -> None:
    data = box_dataset()
    stats = dataset_stats(data, "mpe:simple_spread_continuous")
    assert stats["action_dim"] == 2 and "action_frequencies" not in stats and "num_actions" not in stats
    np.testing.assert_allclose(stats["action_mean"], data.actions.mean(axis=0), rtol=1e-6)
    np.testing.assert_allclose(stats["action_std"], [[np.linspace(0, 1, 6).std(), 0.0], [0.0, 0.5]], rtol=1e-6)
    # Range of each dimension over both agents: [0, 1]. Agent 0 sits at an end on 2 of its 6
    # d0 values and never on d1 (0.25); agent 1 never on d0 (0.5) and always on d1.
    np.testing.assert_allclose(stats["action_at_range_ends"], [2 / 12, 6 / 12])
    vault = tmp_path / "mpe.vlt"
    write_vault(data, vault, "good", {"env": "mpe:simple_spread_continuous"})
    text = write_dataset_card(vault, "good").read_text()
    spread = np.linspace(0, 1, 6).std()
    for row in [
        "| agents / obs dim / state dim / actions | 2 / 4 / 5 / box of 2 dimensions |",
        "## Actions (continuous)",
        "| agent | d0 | d1 | at the range's ends |",
        f"| 0 | 0.500 ± {spread:.3f} | 0.250 ± 0.000 | 0.167 |",
        "| 1 | 0.500 ± 0.000 | 0.500 ± 0.500 | 0.500 |",
        "| win rate | n/a",
    ]:
        assert row in text, row
    assert "Action frequencies" not in text and "box actions: no infos.legals" in text
    assert "Win rate: SMAX" not in text  # no win condition here, so no definition of one
