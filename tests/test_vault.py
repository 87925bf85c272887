"""OG-MARL-compatible vaults: round trip, the exact on-disk layout, vaults built directly
with flashbax (as an OG-MARL user brings them), and a clear error for each corruption."""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import socket
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest
from flashbax.buffers.trajectory_buffer import TrajectoryBufferState
from flashbax.vault import Vault

from offmarl.data.dataset import OfflineDataset
from offmarl.data.vault import (
    list_uids,
    load_vault,
    parse_dataset_arg,
    vault_metadata,
    write_vault,
)
from offmarl.errors import ConfigError

T, N, O, S, A = 23, 3, 5, 7, 4
EPISODE_ENDS = (6, 14, 22)  # three whole episodes


def make_dataset(seed: int = 0) -> OfflineDataset:
    rng = np.random.default_rng(seed)
    terminals = np.zeros((T, N), np.float32)
    terminals[list(EPISODE_ENDS[:2])] = 1.0
    truncations = np.zeros((T, N), np.float32)
    truncations[EPISODE_ENDS[2]] = 1.0
    legals = (rng.random((T, N, A)) < 0.7).astype(np.float32)
    legals[..., 0] = 1.0
    return OfflineDataset(
        observations=rng.standard_normal((T, N, O)).astype(np.float32),
        actions=rng.integers(0, A, (T, N)).astype(np.int32),
        rewards=np.repeat(rng.random((T, 1)), N, axis=1).astype(np.float32),
        terminals=terminals,
        truncations=truncations,
        states=rng.standard_normal((T, S)).astype(np.float32),
        legals=legals,
    )


def og_marl_experience(data: OfflineDataset) -> dict:
    """The experience tree an OG-MARL vault holds, plus an extra key OG-MARL vaults carry."""
    return {
        "observations": data.observations[None],
        "actions": data.actions[None],
        "rewards": data.rewards[None],
        "terminals": data.terminals[None],
        "truncations": data.truncations[None],
        "infos": {
            "state": data.states[None],
            "legals": data.legals[None],
            "mask": np.ones((1, len(data.actions), 1), np.float32),
        },
    }


def flashbax_vault(root: Path, uid: str, experience: dict, write: bool = True) -> None:
    """Build a vault the way an OG-MARL user does, with flashbax directly."""
    length = len(experience["actions"][0])
    state = TrajectoryBufferState(
        experience=experience, current_index=jnp.asarray(length), is_full=jnp.asarray(False)
    )
    with contextlib.redirect_stdout(io.StringIO()):
        vault = Vault(root.name, experience_structure=experience, rel_dir=str(root.parent),
                      vault_uid=uid)
        if write:
            vault.write(state)


def tree_hashes(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_round_trip_is_exact_and_keeps_metadata(tmp_path: Path) -> None:
    data = make_dataset()
    meta = {"env": "smax:3m", "episodes": 3, "epsilon": 0.25, "checkpoints": [1, 2]}
    path = write_vault(data, tmp_path / "x.vlt", "good", meta)
    assert path == tmp_path / "x.vlt" / "good"
    loaded = load_vault(tmp_path / "x.vlt", "good")
    for name, original, back in zip(OfflineDataset._fields, data, loaded, strict=True):
        assert back.dtype == original.dtype, name
        np.testing.assert_array_equal(back, original, err_msg=name)
    stored = vault_metadata(tmp_path / "x.vlt", "good")
    assert {k: stored[k] for k in meta} == meta
    assert list_uids(tmp_path / "x.vlt") == ["good"]
    # Nothing but the dataset itself is left behind (no staging directory).
    assert [p.name for p in (tmp_path / "x.vlt").iterdir()] == ["good"]


def test_on_disk_layout_is_og_marl(tmp_path: Path) -> None:
    data = make_dataset()
    write_vault(data, tmp_path / "x.vlt", "good")
    with contextlib.redirect_stdout(io.StringIO()):
        experience = Vault("x.vlt", rel_dir=str(tmp_path), vault_uid="good").read().experience
    assert set(experience) == {"observations", "actions", "rewards", "terminals", "truncations", "infos"}
    assert set(experience["infos"]) == {"state", "legals"}
    shapes = {
        "observations": (1, T, N, O), "actions": (1, T, N), "rewards": (1, T, N),
        "terminals": (1, T, N), "truncations": (1, T, N),
    }
    for key, shape in shapes.items():
        assert experience[key].shape == shape, key
    assert experience["infos"]["state"].shape == (1, T, S)
    assert experience["infos"]["legals"].shape == (1, T, N, A)
    assert experience["actions"].dtype == jnp.int32
    assert experience["observations"].dtype == jnp.float32


def test_a_vault_built_with_flashbax_loads(tmp_path: Path) -> None:
    data = make_dataset(1)
    flashbax_vault(tmp_path / "3m.vlt", "Good", og_marl_experience(data))
    loaded = load_vault(tmp_path / "3m.vlt", "Good")
    np.testing.assert_array_equal(loaded.observations, data.observations)
    np.testing.assert_array_equal(loaded.legals, data.legals)
    np.testing.assert_allclose(loaded.episode_returns(), data.episode_returns())


def test_existing_uid_is_never_overwritten(tmp_path: Path) -> None:
    write_vault(make_dataset(0), tmp_path / "x.vlt", "good")
    before = tree_hashes(tmp_path)
    with pytest.raises(ConfigError, match="already holds dataset 'good'"):
        write_vault(make_dataset(1), tmp_path / "x.vlt", "good")
    assert tree_hashes(tmp_path) == before


def test_a_failed_write_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def crash(self, *args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(Vault, "write", crash)
    with pytest.raises(OSError, match="disk full"):
        write_vault(make_dataset(), tmp_path / "x.vlt", "good")
    assert list((tmp_path / "x.vlt").iterdir()) == []


def test_a_killed_writers_staging_folder_is_not_a_dataset_and_is_cleared(tmp_path: Path) -> None:
    """A writer killed before its cleanup leaves a hidden staging folder that already holds
    flashbax's metadata.json: it is not listed as a dataset, and the next write removes it
    (its process is dead) while a live writer's folder stays."""
    import subprocess
    import sys

    vault = tmp_path / "x.vlt"
    write_vault(make_dataset(0), vault, "good")
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    host = socket.gethostname()
    abandoned = vault / f".poor.partial-{int(dead.stdout)}-0123abcd-{host}"
    alive = vault / f".medium.partial-{os.getpid()}-4567ef01-{host}"
    elsewhere = vault / f".expert.partial-{int(dead.stdout)}-89ab0123-another-host"  # a shared file system
    for staging in (abandoned, alive, elsewhere):
        staging.mkdir()
        (staging / "metadata.json").write_text("{}")
    assert list_uids(vault) == ["good"]
    write_vault(make_dataset(1), vault, "poor")
    assert not abandoned.exists() and alive.is_dir() and elsewhere.is_dir()
    assert list_uids(vault) == ["good", "poor"]


def test_loading_never_touches_the_files(tmp_path: Path) -> None:
    write_vault(make_dataset(), tmp_path / "x.vlt", "good")
    before = tree_hashes(tmp_path)
    load_vault(tmp_path / "x.vlt", "good")
    vault_metadata(tmp_path / "x.vlt", "good")
    assert tree_hashes(tmp_path) == before


def corrupted(data: OfflineDataset, change: str) -> dict:
    experience = og_marl_experience(data)
    if change == "missing":
        del experience["infos"]["legals"]
    elif change == "shape":
        experience["actions"] = np.zeros((1, T, N + 1), np.int32)
    elif change == "nan":
        experience["rewards"] = experience["rewards"].copy()
        experience["rewards"][0, 5, 1] = np.nan
    elif change == "inf":
        experience["infos"]["state"] = experience["infos"]["state"].copy()
        experience["infos"]["state"][0, 3, 0] = np.inf
    elif change == "range":
        experience["actions"] = experience["actions"].copy()
        experience["actions"][0, 4, 2] = A
    elif change == "no_episode":
        experience["terminals"] = np.zeros_like(experience["terminals"])
        experience["truncations"] = np.zeros_like(experience["truncations"])
    return experience


@pytest.mark.parametrize("change,message", [
    ("missing", "lacks the key 'infos.legals'"),
    ("shape", "key 'actions' has shape (1, 23, 4), expected (1, 23, 3)"),
    ("nan", "key 'rewards' holds NaN or inf (first at time step 5)"),
    ("inf", "key 'infos.state' holds NaN or inf"),
    ("range", f"key 'actions' holds {A}, out of range 0..{A - 1}"),
    ("no_episode", "holds no whole episode"),
])
def test_each_corruption_is_a_one_line_error_naming_the_key(
    tmp_path: Path, change: str, message: str
) -> None:
    flashbax_vault(tmp_path / "bad.vlt", "good", corrupted(make_dataset(), change))
    with pytest.raises(ConfigError) as err:
        load_vault(tmp_path / "bad.vlt", "good")
    assert message in str(err.value)
    assert len(str(err.value).splitlines()) == 1


def test_empty_vault(tmp_path: Path) -> None:
    flashbax_vault(tmp_path / "e.vlt", "good", og_marl_experience(make_dataset()), write=False)
    with pytest.raises(ConfigError, match="is empty"):
        load_vault(tmp_path / "e.vlt", "good")


def test_missing_data_of_a_listed_key(tmp_path: Path) -> None:
    write_vault(make_dataset(), tmp_path / "x.vlt", "good")
    manifest = tmp_path / "x.vlt" / "good" / "manifest.ocdbt"
    manifest.unlink()
    with pytest.raises(ConfigError, match="x.vlt:good"):
        load_vault(tmp_path / "x.vlt", "good")


def test_unknown_uid_and_missing_vault(tmp_path: Path) -> None:
    write_vault(make_dataset(), tmp_path / "x.vlt", "good")
    write_vault(make_dataset(), tmp_path / "x.vlt", "poor")
    with pytest.raises(ConfigError, match="has no dataset 'medium'; it holds: good, poor"):
        load_vault(tmp_path / "x.vlt", "medium")
    with pytest.raises(ConfigError, match="does not exist"):
        load_vault(tmp_path / "nope.vlt", "good")


def test_trailing_partial_episode_is_dropped(tmp_path: Path) -> None:
    data = make_dataset()
    experience = og_marl_experience(data)
    experience["truncations"] = experience["truncations"].copy()
    experience["truncations"][0, EPISODE_ENDS[2]] = 0.0  # the third episode never ends
    flashbax_vault(tmp_path / "p.vlt", "good", experience)
    with pytest.warns(UserWarning, match="dropped a trailing partial episode of 8 time steps"):
        loaded = load_vault(tmp_path / "p.vlt", "good")
    assert loaded.num_transitions == EPISODE_ENDS[1] + 1
    assert loaded.num_episodes == 2


def test_parse_dataset_arg() -> None:
    assert parse_dataset_arg("datasets/smax_3m.vlt:good") == (Path("datasets/smax_3m.vlt"), "good")
    assert parse_dataset_arg("datasets/smax_3m.vlt") == (Path("datasets/smax_3m.vlt"), None)
    assert parse_dataset_arg("a:b/c.vlt") == (Path("a:b/c.vlt"), None)


def test_bad_uid_and_partial_dataset_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="uid '../x' is invalid"):
        write_vault(make_dataset(), tmp_path / "x.vlt", "../x")
    partial = OfflineDataset(*(field[:10] for field in make_dataset()))
    with pytest.raises(ValueError, match="whole episodes only"):
        write_vault(partial, tmp_path / "x.vlt", "good")


# -- box (continuous) actions: OG-MARL's MaMuJoCo layout ------------------------------------

D = 2


def make_box_dataset(seed: int = 0) -> OfflineDataset:
    """make_dataset's episodes with float32 actions [T, N, D] in [0, 1] and no masks."""
    data = make_dataset(seed)
    actions = np.random.default_rng(seed + 100).random((T, N, D)).astype(np.float32)
    return data._replace(actions=actions, legals=np.zeros((T, N, 0), np.float32))


def og_marl_box_experience(data: OfflineDataset) -> dict:
    """The experience of an OG-MARL continuous (MaMuJoCo) vault: no infos.legals."""
    experience = og_marl_experience(data)
    del experience["infos"]["legals"]
    return experience


def test_box_round_trip_is_exact_in_og_marl_continuous_layout(tmp_path: Path) -> None:
    data = make_box_dataset()
    assert data.continuous and not make_dataset().continuous
    write_vault(data, tmp_path / "c.vlt", "good", {"env": "mpe:simple_spread_continuous"})
    loaded = load_vault(tmp_path / "c.vlt", "good")
    for name, original, back in zip(OfflineDataset._fields, data, loaded, strict=True):
        assert back.dtype == original.dtype and back.shape == original.shape, name
        np.testing.assert_array_equal(back, original, err_msg=name)
    assert loaded.fingerprint() == data.fingerprint()
    with contextlib.redirect_stdout(io.StringIO()):
        experience = Vault("c.vlt", rel_dir=str(tmp_path), vault_uid="good").read().experience
    assert set(experience["infos"]) == {"state"}
    assert experience["actions"].shape == (1, T, N, D) and experience["actions"].dtype == jnp.float32


def test_a_continuous_vault_built_with_flashbax_loads(tmp_path: Path) -> None:
    data = make_box_dataset(2)
    flashbax_vault(tmp_path / "2ant.vlt", "Good", og_marl_box_experience(data))
    loaded = load_vault(tmp_path / "2ant.vlt", "Good")
    np.testing.assert_array_equal(loaded.actions, data.actions)
    assert loaded.legals.shape == (T, N, 0) and loaded.num_episodes == 3


@pytest.mark.parametrize("change,message", [
    ("shape", "key 'actions' has shape (1, 23, 4, 2), expected (1, 23, 3, D) to match observations"),
    ("nan", "key 'actions' holds NaN or inf (first at time step 7)"),
    ("missing", "lacks the key 'infos.state'"),
])
def test_each_continuous_corruption_is_a_one_line_error(tmp_path: Path, change: str, message: str) -> None:
    experience = og_marl_box_experience(make_box_dataset())
    if change == "shape":
        experience["actions"] = np.zeros((1, T, N + 1, D), np.float32)
    elif change == "nan":
        experience["actions"] = experience["actions"].copy()
        experience["actions"][0, 7, 1, 0] = np.nan
    else:
        del experience["infos"]["state"]
        experience["infos"]["other"] = np.zeros((1, T, 1), np.float32)
    flashbax_vault(tmp_path / "bad.vlt", "good", experience)
    with pytest.raises(ConfigError) as err:
        load_vault(tmp_path / "bad.vlt", "good")
    assert message in str(err.value) and len(str(err.value).splitlines()) == 1, str(err.value)


def test_box_actions_with_masks_are_refused_on_write(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"box actions have no legal-action masks: legals must be \[T, N, 0\]"):
        write_vault(make_box_dataset()._replace(legals=np.ones((T, N, 4), np.float32)), tmp_path / "x.vlt", "good")
    assert not (tmp_path / "x.vlt" / "good").exists()
