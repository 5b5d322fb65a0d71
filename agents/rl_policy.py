"""The ``rl_policy`` generator: roll out a trained Stable-Baselines3 policy in the task's environment.

For each sample it makes the task's environment (environments register on ``import molgym``):
``gymnasium.make("MolGym/SingleBag-v0", formula=<the sample's bag>, potential=...)`` for formula, shape and
unconditional tasks, and ``gymnasium.make("MolGym/MultiBag-v0", formulas=<the task's formulas>, ...)`` reset with
``options={"formula": <the sample's bag>}`` for stochastic-bag tasks (so a policy trained on that MultiBag fits
every sample). With per-formula checkpoints (``checkpoint="shipped"``, or a mapping formula -> path) each sample
is rolled out instead by the checkpoint for its own bag, in that formula's SingleBag environment (a stochastic-bag
task needs one for each of its formulas).
It resets the environment with a per-sample seed and steps the policy until the episode ends; the final canvas
is the generated molecule (an episode ended by an invalid placement yields the partial molecule, which the
metrics then score as not matching the task). A policy whose observation space does not
match the environment's is refused with an error naming both. Stochastic actions are drawn from
torch's RNG inside ``torch.random.fork_rng`` seeded per job, so runs are reproducible and leave the global RNG
untouched. Potential calls made by the environment are counted.

Args (``--option rl_policy.KEY=VALUE`` on the command line):
    checkpoint: path of the SB3 ``.zip`` (required), or ``"shipped"``: for each sample's formula, the checkpoint
        that ships with molgym for it (:mod:`molgym.agents.shipped`; sha256-checked; a formula without one is
        refused with the list of those that have one; the runner skips such tasks and unconditional ones), or a
        mapping formula -> path (e.g. ``{"C7H10O2": "runs/a/model.zip", "C7H8N2O2": "runs/b/model.zip"}``, the
        agents a refinement round harvests from), which is treated like the shipped table.
        Loading a checkpoint unpickles it: load only files you trust.
    algorithm: SB3 class name (``"PPO"``, ``"A2C"``, ``"SAC"``, ...) or ``"auto"`` (try PPO, A2C, SAC, TD3, DDPG).
    deterministic: use the policy's mode instead of sampling (default False).
    env_id: environment id, or ``"auto"`` (default) for the choice above.
    env_kwargs: extra keyword arguments for the environment (e.g. ``{"elements": ["H", "C", "N", "O"]}`` when the
        policy was trained with a fixed element vocabulary).
    device: torch device for the policy (default ``"cpu"``).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from ase import Atoms

from molgym.generator import Generator, Progress

__all__ = ["RLPolicy"]

_ALGORITHMS = ("PPO", "A2C", "SAC", "TD3", "DDPG")


def _formula_table(checkpoints: Mapping[str, str]) -> dict[str, Path]:
    """``{formula: path}`` with each formula checked and written in Hill order (``"OCH4"`` -> ``"CH4O"``)."""
    from molgym.chem import format_formula, parse_formula

    table: dict[str, Path] = {}
    for formula, path in checkpoints.items():
        try:
            key = format_formula(parse_formula(str(formula)))
        except ValueError as err:
            raise ValueError(f"rl_policy checkpoint table: bad formula {formula!r}: {err}") from None
        if key in table:
            raise ValueError(f"rl_policy checkpoint table names {key} twice")
        if not isinstance(path, (str, Path)) or not str(path):
            raise ValueError(f"rl_policy checkpoint table: the checkpoint for {formula!r} must be a path, "
                             f"got {path!r}")
        table[key] = Path(path).expanduser()
    if not table:
        raise ValueError("rl_policy checkpoint table is empty: give at least one formula -> PATH.zip")
    return table


class RLPolicy(Generator):
    """Generator backed by a trained SB3 policy and a MolGym environment."""

    name = "rl_policy"
    version = "1"

    def __init__(self, potential="auto", checkpoint: str | Mapping[str, str] | None = None,
                 algorithm: str = "auto", deterministic: bool = False, env_id: str = "auto",
                 env_kwargs: dict | None = None, device: str = "cpu"):
        if not checkpoint:
            raise ValueError("rl_policy needs a checkpoint: --option rl_policy.checkpoint=PATH.zip (or =shipped, "
                             "or a JSON object formula -> PATH.zip)")
        if algorithm != "auto" and algorithm not in _ALGORITHMS:
            raise ValueError(f"unknown SB3 algorithm {algorithm!r}; allowed: auto, {', '.join(_ALGORITHMS)}")
        #: per-formula checkpoints (Hill formula -> path), or None for one checkpoint for every task
        self.per_formula: dict[str, Path] | None = None
        if isinstance(checkpoint, Mapping):
            self.per_formula = _formula_table(checkpoint)
            recorded = {formula: str(path) for formula, path in self.per_formula.items()}
        else:
            recorded = str(checkpoint)
        super().__init__(potential=potential, checkpoint=recorded, algorithm=algorithm,
                         deterministic=bool(deterministic), env_id=env_id, env_kwargs=dict(env_kwargs or {}),
                         device=device)
        self.shipped = str(checkpoint) == "shipped"
        self.checkpoint = None if self.shipped or self.per_formula else Path(checkpoint).expanduser()
        self.algorithm, self.deterministic, self.env_id = algorithm, bool(deterministic), env_id
        self.env_kwargs, self.device = dict(env_kwargs or {}), device
        self._models: dict[Path, object] = {}
        self._envs: dict[tuple[Path, str], object] = {}

    def _table(self) -> dict[str, object]:
        """Formula -> checkpoint entry, for per-formula checkpoints (shipped or given)."""
        if self.per_formula is not None:
            return dict(self.per_formula)
        from molgym.agents.shipped import shipped_checkpoints

        return shipped_checkpoints()

    def unsupported(self, task) -> str | None:
        """With per-formula checkpoints: the reason when none fits ``task`` (unconditional tasks, formulas without
        a checkpoint; a stochastic-bag task needs one for each of its formulas)."""
        if self.checkpoint is not None:
            return None
        if task.kind == "unconditional":
            return (f"{self._which} checkpoints are per formula; unconditional task {task.name!r} needs "
                    "checkpoint=PATH.zip")
        return self._missing(task.formulas if task.kind == "bag" else (task.formula,))

    @property
    def _which(self) -> str:
        return "shipped" if self.shipped else "given"

    def _missing(self, formulas) -> str | None:
        """The reason when some of ``formulas`` has no per-formula checkpoint (shipped or given), else None."""
        from molgym.chem import format_formula, parse_formula

        table = self._table()
        missing = sorted({format_formula(parse_formula(f)) for f in formulas} - set(table))
        if missing:
            return (f"no {self._which} checkpoint for {', '.join(missing)} "
                    f"({self._which}: {', '.join(sorted(table))})")
        return None

    def _checkpoint_for(self, task, formula: str) -> Path:
        """The checkpoint that rolls out ``formula``: the one given, or the per-formula one (shipped or given)
        for that formula (for a stochastic-bag task, the one for each sample's bag)."""
        if self.per_formula is not None:
            reason = self._missing([formula])
            if reason:
                raise ValueError(f"task {task.name!r}: {reason}")
            return self.per_formula[formula]
        if not self.shipped:
            return self.checkpoint
        from molgym.agents.shipped import shipped_checkpoint

        try:
            return shipped_checkpoint(formula)
        except ValueError as err:
            raise ValueError(f"task {task.name!r}: {err}") from None

    def _load_model(self, path: Path):
        if path in self._models:
            return self._models[path]
        if not path.is_file():
            raise FileNotFoundError(f"rl_policy checkpoint {str(path)!r} does not exist")
        import stable_baselines3 as sb3

        names = _ALGORITHMS if self.algorithm == "auto" else (self.algorithm,)
        errors = []
        for name in names:
            try:
                self._models[path] = getattr(sb3, name).load(str(path), device=self.device)
                self.settings["algorithm_loaded"] = name
                return self._models[path]
            except Exception as err:  # wrong algorithm for this zip: try the next
                errors.append(f"{name}: {type(err).__name__}: {err}")
        raise ValueError(f"could not load {path} as an SB3 checkpoint ({'; '.join(errors)})")

    def _env(self, task, formula: str, path: Path):
        """The environment for one sample (cached), checked against the observation space of the policy in
        ``path``."""
        # one policy for every bag of a stochastic task plays MultiBag; per-formula ones play SingleBag
        multi = (task.kind == "bag" and self.checkpoint is not None
                 and self.env_id in ("auto", "MolGym/MultiBag-v0"))
        key = (path, "multi" if multi else formula)
        if key not in self._envs:
            import gymnasium

            import molgym  # noqa: F401  (registers the MolGym/... ids)

            single = "MolGym/SingleBag-v0" if self.env_id == "auto" else self.env_id
            env_id = "MolGym/MultiBag-v0" if multi else single
            if env_id not in gymnasium.registry:
                raise ValueError(f"environment {env_id!r} is not registered; MolGym ids: "
                                 f"{', '.join(k for k in gymnasium.registry if k.startswith('MolGym/'))}")
            kwargs = {"formulas": list(task.formulas)} if multi else {"formula": formula}
            env = gymnasium.make(env_id, potential=self.potential(), **kwargs, **self.env_kwargs)
            expected = self._models[path].observation_space
            if expected is not None and expected != env.observation_space:
                env.close()
                raise ValueError(
                    f"the policy in {path} expects observations {expected}, but {env_id} for "
                    f"{'formulas ' + ', '.join(task.formulas) if multi else formula} gives {env.observation_space}; "
                    "use a policy trained on this environment (or pass env_id/env_kwargs that reproduce its "
                    "training environment)"
                )
            self._envs[key] = env
        return self._envs[key], ({"formula": formula} if multi else None)

    def generate(self, task, n: int, seed: int, progress: Progress | None = None) -> list[Atoms]:
        """Roll out ``n`` episodes (one per bag of ``task``), seeded by ``seed``; ``progress(k)`` after each."""
        import torch

        task = self.require_task(task)
        from molgym.chem import format_formula

        bags = list(task.bags(n, seed))
        paths = [self._checkpoint_for(task, format_formula(bag)) for bag in bags]  # refuse before any rollout
        out = []
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            for i, (bag, path) in enumerate(zip(bags, paths)):
                model = self._load_model(path)
                env, options = self._env(task, format_formula(bag), path)
                obs, _info = env.reset(seed=int(seed) * 1_000_003 + i, options=options)
                done, steps = False, 0
                while not done:
                    action, _state = model.predict(obs, deterministic=self.deterministic)
                    obs, _r, terminated, truncated, _info = env.step(action)
                    done = terminated or truncated
                    steps += 1
                atoms = env.unwrapped.canvas
                atoms.info = {"episode_return": float(atoms.info.get("episode_return", 0.0)), "steps": steps}
                out.append(atoms)
                if progress is not None:
                    progress(len(out))
        return out

    def metadata(self) -> dict:
        """The base metadata; with the shipped checkpoints also ``figures``: the learning curves of their training
        (title -> PNG path), which the benchmark report shows."""
        meta = super().metadata()
        if self.shipped:
            from molgym.agents.shipped import LEARNING_CURVES

            figures = {title: str(path) for title, path in LEARNING_CURVES.items() if path.is_file()}
            if figures:
                meta["figures"] = figures
        return meta
