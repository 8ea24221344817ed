"""RESULTS.md, rebuilt from results/: every measurement with the machine and command behind it.

    python -m tools.results            # writes RESULTS.md from results/*.md, results/*.json and
                                       # the commentary in results/notes/*.md

Each section is a commentary written by hand (results/notes/NAME.md: what was run, how to read
it) followed by the tables the measuring tools wrote (results/*.md) and their figures. A table is
never typed into RESULTS.md by hand: re-run the tool that made it, then this. A GPU suite's files
(results/gpu_suite_<gpu>.*) appear when a GPU has run it.
"""

from __future__ import annotations

import glob
import json
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(ROOT, "results")

# (title, notes file, tables (results/*.md), figures (results/*.png)); "gpu_suite_*" is a glob
SECTIONS = [
    ("Where these figures come from", "machines", [], []),
    ("`python train.py`: the default run on the toy world", "default_run", ["bench_engines_cpu"],
     ["default_eval_behaviour.png"]),
    ("The GPU suite", "gpu_suite", ["gpu_suite_*"], []),
    ("Log-prob gathering", "logprobs", ["bench_logprobs_cpu"], []),
    ("One training step", "step", ["bench_step_toy_cpu"], []),
    ("Memory of a real step", "memory", ["bench_memory_cpu", "memory_plan"], []),
    ("The static engine's plan: KV slots read and guards checked", "engine_plan",
     ["bench_kv_plan_cpu", "bench_compaction_cpu"], []),
    ("The paper's experiment on the toy", "toy", ["toy_table", "lr_grid", "toy_ablations", "toy_seeds",
                                                  "toy_discriminators"],
     ["toy_claims.png", "toy_methods.png", "toy_behaviour.png", "toy_curves.png",
      "toy_lambda_sweep.png"]),
    ("The teacher's strength: where does one step beat two?", "teacher", ["toy_teacher"],
     ["toy_teacher.png"]),
    ("A toy POLAR: the discriminator learned the way the paper's is", "toy_polar", ["toy_polar"],
     ["toy_polar.png"]),
    ("The adversarial claims with the toy POLAR", "polar_claims", ["toy_polar_claims"],
     ["toy_polar_claims.png"]),
    ("When one step beats two: drift in the shifted world", "shifted", ["toy_shifted_lr", "toy_shifted"],
     ["toy_shifted.png"]),
    ("Beyond instruction following: GSM8K in miniature and process rewards", "gsm8k",
     ["toy_gsm8k_lr", "toy_gsm8k"], ["toy_gsm8k.png"]),
]


def section(title: str, notes: str, tables: list[str], figures: list[str]) -> str:
    parts = [f"## {title}"]
    path = os.path.join(RESULTS, "notes", notes + ".md")
    if os.path.exists(path):
        parts.append(open(path).read().strip())
    for pattern in tables:
        found = sorted(glob.glob(os.path.join(RESULTS, pattern + ".md")))
        if not found and "*" not in pattern:
            parts.append(f"(results/{pattern}.md is missing: re-run the tool that writes it)")
        for md in found:
            parts.append(f"`results/{os.path.basename(md)}`:\n\n" + open(md).read().strip())
    parts += [f"![{fig}](results/{fig})" for fig in figures
              if os.path.exists(os.path.join(RESULTS, fig))]
    return "\n\n".join(parts)


def default_run_line() -> str:
    """The default run's four accuracies, read from results/default_eval.json."""
    path = os.path.join(RESULTS, "default_eval.json")
    if not os.path.exists(path):
        return ""
    r = json.load(open(path))
    return (f"`results/default_eval.json`: prompt-level strict {r['prompt_strict']:.3f}, "
            f"instruction-level strict {r['inst_strict']:.3f}, prompt-level loose "
            f"{r['prompt_loose']:.3f}, instruction-level loose {r['inst_loose']:.3f} on "
            f"{r['n_prompts']} held-out prompts.")


def build() -> str:
    body = [section(*s) for s in SECTIONS]
    body[1] += "\n\n" + default_run_line()
    return "\n\n".join(["# Results", "Built by `python -m tools.results` from `results/`; the "
                        "commentary of each section is `results/notes/`.", *body]) + "\n"


def main(argv=None):
    text = build()
    with open(os.path.join(ROOT, "RESULTS.md"), "w") as f:
        f.write(text)
    print(f"wrote RESULTS.md ({len(text.splitlines())} lines)")


if __name__ == "__main__":
    main()
