"""The paper's LFW experiment (Tables 3-5 and more) as data: each stage is a list of protect runs,
each run a method config plus overlay flags, and one evaluated table. ``tipim reproduce`` runs
them; ``--dry-run`` prints the exact commands. Every command is recorded in ``commands.txt`` as it
can be typed again, and each table folder gets the resolved config of every run in it
(``configs/<run>.yaml``).
"""

from __future__ import annotations

import json
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

SURROGATES = ["arcface-mbf", "sface", "facenet", "dlib-resnet"]  # the ensemble stage leaves each out in turn
EVAL_MODELS = [*SURROGATES, "edgeface-s"]  # edgeface-s never makes a mask here: a black box for every table
TABLE3 = ["mim", "dim", "mt-dim", "center-opt", "tipim"]
STAGES = ["table3", "schedule", "ensemble", "gamma", "photos"]
EXACT_GREEDY = json.dumps({"class_path": "tipim.attack.GreedyInsertion", "init_args": {"every": 1}})


@dataclass
class Run:
    """One ``tipim protect``: ``method`` picks ``configs/method/<method>.yaml``; ``args`` overlay it.
    ``photos``: the probes' whole photos instead of their aligned crops."""

    name: str
    method: str = "tipim"
    args: list[str] = field(default_factory=list)
    photos: bool = False


@dataclass
class Stage:
    name: str  # also the table's folder under the results
    title: str
    runs: list[Run]  # protected (resumed if already there) and evaluated, in this order
    evaluate_args: list[str] = field(default_factory=list)


def stages(methods: list[str] = TABLE3, held: list[str] | None = None, ensemble_every: int = 1) -> dict[str, Stage]:
    tipim = Run("tipim")
    loo = []
    for h in held or SURROGATES:
        name = f"tipim-loo-{h}" + (f"-every{ensemble_every}" if ensemble_every != 1 else "")
        members = ",".join(m for m in SURROGATES if m != h)
        loo.append(Run(name, args=["--model.method", name, "--model.surrogates", f"[{members}]",
                                   "--model.selector.init_args.every", str(ensemble_every)]))
    return {
        "table3": Stage("table3", "Methods, arcface-mbf surrogate (Table 3 layout)", [Run(m, m) for m in methods]),
        "schedule": Stage("schedule", "Greedy selection every s-th step", [tipim] + [
            Run(f"tipim-every{s}", args=["--model.method", f"tipim-every{s}", "--model.selector.init_args.every", str(s)]) for s in (2, 5, 10)]),
        "ensemble": Stage("ensemble" if ensemble_every == 1 else f"ensemble-every{ensemble_every}",
                          "TIP-IM with leave-one-out ensembles (Table 4 layout)", loo),
        "gamma": Stage("gamma", "TIP-IM, gamma sweep (Table 5 layout; the tipim row is gamma 1)", [
            Run(f"tipim-gamma{g}", args=["--model.method", f"tipim-gamma{g}", "--model.gamma", str(g)]) if g != 1 else tipim for g in (0, 1, 2, 3)]),
        "photos": Stage("photos", "Whole photos through an attacker's pipeline (re-encode, re-detect, re-align)", [
            Run(n, photos=True, args=["--model.method", n, "--robust" if n.endswith("robust") else "--no-robust"])
            for n in ("tipim-photo", "tipim-photo-robust")], ["--pipeline", "photo", "--jpeg", "0", "95", "75"]),
    }


@dataclass
class Plan:
    aligned: Path
    out: Path
    runs: Path
    probes: int | None = None
    protect_args: list[str] = field(default_factory=list)
    eval_models: list[str] = field(default_factory=lambda: list(EVAL_MODELS))

    @property
    def protocol(self) -> Path:
        return self.out / "protocol.json"

    def limit(self) -> list[str]:
        return ["--data.limit", str(self.probes), "--data.limit_seed", "0"] if self.probes else []

    def protect(self, run: Run) -> list[str]:
        p, where = str(self.protocol), str(self.runs / run.name)
        if run.photos:
            return ["protect", p, "--out", where, "--targets", p, "--preset", "balanced", "--goal", "target", "--faces", "center",
                    "--data.root", str(self.aligned), *self.limit(), "--model.selector", EXACT_GREEDY, *self.protect_args, *run.args]
        return ["protect", "--config", "configs/protect.yaml", "--config", f"configs/method/{run.method}.yaml",
                "--data.faces", p, "--data.targets", p, "--data.root", str(self.aligned), "--data.output_dir", where,
                "--trainer.enable_progress_bar", "false", *self.limit(), *self.protect_args, *run.args]

    def evaluate(self, stage: Stage) -> list[str]:
        return ["evaluate", "--protocol", str(self.protocol), "--models", *self.eval_models, "--out", str(self.out / stage.name),
                "--title", stage.title, *stage.evaluate_args, "--runs", *[str(self.runs / r.name) for r in stage.runs]]

    def build_protocol(self) -> list[str]:
        return ["protocol", "build", "--aligned", str(self.aligned), "--out", str(self.protocol), "--seed", "0"]


def _call(args: list[str], log: Path | None, dry: bool) -> None:
    """Each step in its own process, not through the Python API: a protect run with several
    devices starts DDP, whose launcher re-runs the current command line in each new process (here
    it would re-run the whole reproduction); a process per run also returns each run's memory and
    lets a failed run stop with its own exit code while finished runs stay (resume by re-running)."""
    line = shlex.join(["tipim", *args])
    print(line, flush=True)
    if dry:
        return
    if log is not None:
        with log.open("a") as f:
            f.write(line + "\n")
    code = subprocess.call([sys.executable, "-m", "tipim.cli", *args])
    if code != 0:
        raise RuntimeError(f"this step failed (exit {code}); fix it and run the same `tipim reproduce` again (finished runs are kept):\n  {line}")


def run(plan: Plan, chosen: list[Stage], evaluate: bool = True, dry: bool = False) -> None:
    log = None
    if not dry:
        plan.out.mkdir(parents=True, exist_ok=True)
        plan.runs.mkdir(parents=True, exist_ok=True)
        log = plan.out / "commands.txt"
    if not plan.protocol.is_file():
        if not dry and not plan.aligned.is_dir():
            raise RuntimeError(f"no aligned LFW at {plan.aligned}: make it with `make align-lfw` (or pass --aligned DIR)")
        _call(plan.build_protocol(), log, dry)
    for stage in chosen:
        for r in stage.runs:
            _call(plan.protect(r), log, dry)
        if not evaluate:
            continue
        _call(plan.evaluate(stage), log, dry)
        if not dry:  # each table keeps the resolved config of every run in it
            configs = plan.out / stage.name / "configs"
            configs.mkdir(parents=True, exist_ok=True)
            for r in stage.runs:
                if (plan.runs / r.name / "config.yaml").is_file():
                    shutil.copy(plan.runs / r.name / "config.yaml", configs / f"{r.name}.yaml")


def add_arguments(p) -> None:
    """``tipim reproduce``'s options, on the subcommand parser ``tipim.cli`` gives."""
    p.add_argument("--stages", nargs="+", default=STAGES[:4], choices=STAGES, help="default: every stage but photos")
    p.add_argument("--probes", type=int, default=None, help="a seeded subset of the 500 probes, the same for every method")
    p.add_argument("--aligned", default="data/lfw-aligned", help="aligned LFW (`make align-lfw`)")
    p.add_argument("--out", default="results/reproduce", help="tables, protocol.json, commands.txt")
    p.add_argument("--runs", default="runs/reproduce", help="the protected images of every run")
    p.add_argument("--methods", nargs="+", default=TABLE3, choices=TABLE3, help="table3's methods")
    p.add_argument("--held", nargs="+", choices=SURROGATES, help="ensemble stage: only these held-out models (default: each)")
    p.add_argument("--ensemble-every", type=int, default=1, help="ensemble stage: greedy choice every s-th step (about 5x dearer)")
    p.add_argument("--eval-models", nargs="+", default=EVAL_MODELS, help="evaluation models")
    p.add_argument("--protect-args", default="", help='extra flags for every protect run, written with "=": --protect-args="--trainer.accelerator gpu"')
    p.add_argument("--no-evaluate", dest="evaluate", action="store_false", help="protect only (evaluate later, where every model is)")
    p.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")


def main(args) -> int:
    plan = Plan(Path(args.aligned), Path(args.out), Path(args.runs), args.probes, shlex.split(args.protect_args), args.eval_models)
    table = stages(args.methods, args.held, args.ensemble_every)
    try:
        run(plan, [table[s] for s in args.stages], args.evaluate, args.dry_run)
    except RuntimeError as e:
        print(f"tipim reproduce: {e}", file=sys.stderr)
        return 1
    return 0


__all__ = ["EVAL_MODELS", "Plan", "Run", "STAGES", "Stage", "stages"]
