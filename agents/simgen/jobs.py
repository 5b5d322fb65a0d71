"""SiMGen's set-up of a request: the heavy elements it may place, and one job (size, elements, hydrogens) per
molecule to make, from a benchmark task or from the free settings."""

from __future__ import annotations

from molgym.chem import atomic_number, symbol

from molgym.agents.simgen.settings import DEFAULT_ELEMENTS, MAX_HEAVY_ATOMS, _Job

_KNOWN = {1, 5, 6, 7, 8, 9, 15, 16, 17, 35, 53}


class JobPlanning:
    """Mixin of :class:`~molgym.agents.simgen.SiMGen`: the allowed elements and the jobs of a ``generate`` call."""

    def _allowed_elements(self, model) -> tuple[int, ...]:
        if self.elements is None:  # the defaults that both the model and the reference have
            present = set(self.reference().numbers.tolist()) & set(model.species)
            syms = tuple(s for s in DEFAULT_ELEMENTS if atomic_number(s) in present)
        else:
            syms = self.elements
        numbers = tuple(atomic_number(s) for s in syms)
        missing = [symbol(z) for z in numbers if z not in model.species]
        if missing:
            raise ValueError(f"element(s) {', '.join(missing)} not covered by {model.name}; it covers "
                             f"{', '.join(symbol(z) for z in sorted(model.species) if z in _KNOWN)}")
        ref_numbers = set(self.reference().numbers.tolist())
        absent = [symbol(z) for z in numbers if z not in ref_numbers]
        if absent:
            raise ValueError(f"element(s) {', '.join(absent)} do not occur in the reference molecules, so the "
                             f"kernel cannot place them; the reference has "
                             f"{', '.join(symbol(z) for z in sorted(ref_numbers))}")
        return numbers

    def _jobs(self, task, n: int, seed: int) -> list[_Job]:
        model = self.descriptor_model()
        allowed = self._allowed_elements(model)
        n_fixed = 0 if self.fragment is None else len(self.fragment)
        jobs = []
        if task is None or getattr(task, "kind", None) == "unconditional":
            bags = task.bags(n, seed) if task is not None and self.n_atoms is None else [None] * n
            for bag in bags:
                if bag is not None:  # unconditional task: the size of a QM9 molecule, any allowed elements
                    size = sum(k for s, k in bag.items() if s != "H") - n_fixed
                elif self.n_atoms is not None:
                    size = self.n_atoms
                elif self.prior.n_atoms() is not None:  # the shape implies the total, fragment included
                    size = self.prior.n_atoms() - n_fixed
                else:
                    size = 9
                jobs.append(_Job(size, allowed, None, None))
        else:
            for bag in task.bags(n, seed):
                heavy = tuple(sorted(atomic_number(s) for s, k in bag.items() if s != "H" for _ in range(k)))
                if self.fragment is not None:
                    heavy = list(heavy)
                    for z in self.fragment.numbers:
                        if int(z) in heavy:
                            heavy.remove(int(z))
                    heavy = tuple(heavy)
                missing = [symbol(z) for z in set(heavy) if z not in model.species]
                if missing:
                    raise ValueError(f"task {task.name} needs {', '.join(missing)}, which {model.name} does not cover")
                jobs.append(_Job(len(heavy), tuple(sorted(set(heavy))), heavy, int(bag.get("H", 0))))
        for job in jobs:
            total = job.n_heavy + n_fixed
            if job.n_heavy < 1:
                raise ValueError("nothing to generate: the fragment already holds every heavy atom of the task")
            if total > MAX_HEAVY_ATOMS:
                raise ValueError(f"{total} heavy atoms is more than SiMGen handles; allowed: 1..{MAX_HEAVY_ATOMS}")
            limit = getattr(model, "max_atoms_per_batch", None)
            if limit is not None and total * 5 > limit:
                raise ValueError(f"{total} heavy atoms (about {total * 5} atoms with hydrogens) is more than "
                                 f"{model.name} evaluates in one batch (max_atoms_per_batch={limit})")
        return jobs
