"""The model card: the registered version's description, in Markdown, that a reviewer reads
before approving (``model_card``), and the one-line gate summary of the ``fmops.gate`` tag.

Data, training (base model, method, job, instance and cost), the leaderboard and the gate's
decision with its confidence intervals, hosting recommendation, the run's bill, known limits, and
how to review.
"""

from __future__ import annotations

import json
from typing import Any

from fmops.config import PipelineConfig
from fmops.evaluation import optimization as optimization_rules
from fmops.kinds import kind_of
from fmops.registry import tracking
from fmops.registry.review import APPROVAL_TAG, APPROVED, COMMENT_TAG, REJECTED, REVIEWER_TAG
from fmops.registry.runs import candidate_of
from fmops.targets import get_target


def instance_line(winner: dict) -> str:
    """The SageMaker instance the winner trained on, and any capacity fallback on the way."""
    instance = winner.get("instance")
    if not instance:
        return ""
    tried = "".join(
        f"\n  - fell back from `{t['instance_type']}`: {t['why'].splitlines()[0][:160]}"
        for t in instance.get("tried", [])
    )
    return f"\n- instance `{instance['instance_type']}`: {instance.get('reason', '')}{tried}"


def cost_lines(costs: dict[str, Any] | None) -> str:
    if not costs:
        return "Local target: the jobs ran on this machine and nothing was billed."
    lines = [
        f"- `{j['job_name']}` ({j['candidate']}): "
        + (
            f"${j['usd']:.4f} = {j['billed_seconds']:.0f} s x ${j['usd_per_hour']}/h x "
            f"{j.get('instances') or 1} {j['instance_type']}"
            if j.get("usd") is not None
            else "no billed time reported"
        )
        + (f", spot saving {j['spot_saving_percent']}%" if "spot_saving_percent" in j else "")
        for j in costs["jobs"]
    ]
    unknown = f" ({len(costs['unknown'])} job(s) without a billed time)" if costs["unknown"] else ""
    return "\n".join([*lines, f"- run total: ${costs['total_usd']:.4f}{unknown}"])


CARD_HEADER = (
    "| model | mean win rate | primary | ECE | worst robustness drop | max fairness gap "
    "| p95 latency (ms) | USD / 1k requests |\n|---|---|---|---|---|---|---|---|"
)


def _percent(confidence: float) -> str:
    return f"{confidence * 100:g}%"


def comparison_line(comparison: dict[str, Any] | None) -> str:
    """One gate comparison (``GateDecision.champion``/``baseline`` as a dict) in a sentence:
    the mean difference and its confidence interval, the margin, and the verdict."""
    if not comparison:
        return "not compared"
    result = comparison.get("result")
    if not result:
        return comparison.get("reason", "not compared")
    verdict = "clears" if comparison["cleared"] else "does not clear"
    return (
        f"{comparison['candidate']} - {comparison['against']} on `{comparison['metric']}`: "
        f"mean {result['mean_difference']:+.4f}, {_percent(result['confidence'])} CI "
        f"[{result['lower']:+.4f}, {result['upper']:+.4f}] (paired bootstrap, "
        f"{result['resamples']} resamples, seed {result['seed']}, n={result['n']}); "
        f"the lower end {verdict} the margin {comparison['margin']:g}"
    )


def gate_summary(decision: dict[str, Any]) -> str:
    """The gate's decision in one line, for the ``fmops.gate`` tag: the verdict, the winner's
    bounds, and the confidence intervals against the champion and the untuned baseline."""
    gate = decision.get("gate") or {}
    winner = decision["winner"]
    verdict = "promote" if decision.get("promote", True) else "do not promote"
    parts = [f"{verdict} {winner} ({decision['metric']}={decision['score']:.4f})"]
    checks = (gate.get("checks") or {}).get(winner) or []
    if checks:
        parts.append(f"bounds passed {sum(c['passed'] for c in checks)}/{len(checks)}")
    for role, label in (("champion", "vs champion"), ("baseline", "vs baseline")):
        comparison = gate.get(role)
        result = (comparison or {}).get("result")
        if result:
            cleared = "clears" if comparison["cleared"] else "does not clear"
            parts.append(
                f"{label}: {result['mean_difference']:+.4f}, {_percent(result['confidence'])} CI "
                f"[{result['lower']:+.4f}, {result['upper']:+.4f}] {cleared} margin "
                f"{comparison['margin']:g}"
            )
        elif role == "champion":
            parts.append("no champion to beat" if comparison is None else f"{label}: not tested")
    return "; ".join(parts)[: tracking.MAX_TAG_VALUE]


def hosting_recommendation(
    config: PipelineConfig, decision: dict, winner: str
) -> tuple[str, str | None]:
    """The card's hosting paragraph and the recommended instance type (None if none fits)."""
    cost = (decision.get("costs_per_1k") or {}).get(winner) or {}
    instance = cost.get("instance_type")
    if not instance:
        return f"No hosting recommendation: {cost.get('estimate', 'no cost estimate')}.", None
    price = cost.get("price_per_hour")
    per_1k = cost.get("usd_per_1k_requests")
    text = f"Recommended instance `{instance}`"
    if cost.get("instance_count"):
        text += f" x {cost['instance_count']}"
    if price is not None:
        text += f" at ${price}/h each ({cost.get('price_source') or 'catalog price'})"
    if per_1k is not None:
        peak = f" at a peak of {cost['peak_rps']:g} requests/s" if cost.get("peak_rps") else ""
        text += (
            f", about ${per_1k:.6f} per 1,000 requests{peak} "
            f"({cost.get('estimate', 'an estimate')})"
        )
    return f"{text}. {get_target(config.target).hosting_note(config)}", instance


def _training_lines(config: PipelineConfig, winner: dict) -> str:
    candidate = candidate_of(config, winner["candidate"])
    if candidate is None:
        method = "unknown (the candidate is not in this config)"
        base = "unknown"
    else:
        base = candidate.base_model
        method = candidate.method
        if candidate.lora is not None:
            method += f" ({json.dumps(candidate.lora.model_dump(mode='json', exclude_none=True))})"
    cost = winner.get("cost") or {}
    if cost.get("usd") is not None:
        billed = f"${cost['usd']:.4f} ({cost.get('billed_seconds')} billed s on "
        billed += f"{cost.get('instance_type')} at ${cost.get('usd_per_hour')}/h)"
    else:
        billed = get_target(winner.get("target") or config.target).unbilled_note
    seconds = winner.get("training_seconds")
    return "\n".join(
        [
            f"- base model `{base}`, method {method}",
            f"- training job `{winner['job_name']}` on the {winner.get('target', config.target)} "
            f"target, {'n/a' if seconds is None else f'{seconds} s'}{instance_line(winner)}",
            f"- cost of the training job: {billed}",
            f"- model artifacts `{winner['model_artifacts']}`",
            f"- hyperparameters: `{json.dumps(winner['hyperparameters'], sort_keys=True)}`",
        ]
    )


def _labels_source(config: PipelineConfig) -> str:
    labels = config.data.labels
    if labels is None:
        return f"none ({config.data.task} data)"
    return f"`{labels}`" if isinstance(labels, str) else "the config"


def _known_limits(config: PipelineConfig, staged: dict, decision: dict, winner: str) -> str:
    row = next((r for r in decision["leaderboard"] if r["candidate"] == winner), {})
    lines = [
        *kind_of(config).card_limits(config, staged, winner),
        f"- Trained on {staged['train_rows']} rows sampled from `{config.data.train}`; it is only "
        "as good as that data is like the traffic it will see.",
    ]
    if row.get("worst_drop") is not None or row.get("max_gap") is not None:
        lines.append(
            f"- Robustness and fairness on the evaluation set: the worst drop of the primary "
            f"metric under perturbation is {row.get('worst_drop')}, the largest gap between "
            f"groups {row.get('max_gap')} (see the report)."
        )
    lines.append(
        "- The cost per 1,000 requests is an estimate from the evaluation machine's throughput, "
        "not a measurement on the hosting instance."
    )
    return "\n".join(lines)


def num(value: float | None, digits: int = 4) -> str:
    """A card's table figure: ``n/a`` for a missing one."""
    return "n/a" if value is None else f"{value:.{digits}f}"


SPEEDUPS = {
    "single_request": "a single request",
    "batched": "the batched pass",
    "tokens": "generated tokens/s",
}


def speedups(figures: dict[str, float | None]) -> str:
    """E.g. "8.5x a single request, 8.5x the batched pass": the speed-ups that were measured."""
    found = [f"{figures[key]}x {label}" for key, label in SPEEDUPS.items() if figures.get(key)]
    return ", ".join(found) or "speed-up not measured"


def serving_lines(config: PipelineConfig, optimization: dict[str, Any] | None) -> str:
    """The model card's section on what the version serves: the eager weights, or the
    optimized artifact select kept (``fmops.evaluation.optimization``), with both models'
    metrics, each artifact's paired-bootstrap test and the speed-up."""
    if not optimization:
        return (
            "eager PyTorch (no optimize step: `evaluation.optimize.runtimes`, or `generative` "
            "for a causal LM, is empty)"
        )

    kept = optimization.get("kept")
    if kept:
        engine = optimization.get("engine", optimization_rules.ONNX_RUNTIME)
        lines = [
            f"Served: **{optimization_rules.artifact_name(kept, engine)} "
            f"`{optimization['graph']}`**, beside the eager weights (both in the version, with "
            f"their digests): {optimization_rules.headline(optimization['speedup'])}."
        ]
    else:
        lines = [f"Served: **eager PyTorch**: {optimization['reason']}."]
    if optimization["checks"]:
        lines.append(
            f"\nEach optimized artifact against the eager model on `{optimization['metric']}` "
            f"(paired bootstrap of artifact - eager; kept when the interval's lower end is at or "
            f"above -{optimization['margin']:g}; the first kept in the configured order is "
            "served):"
        )
        lines += [
            f"- {c['runtime']}: {c['why']}; {speedups(c['speedup'])}"
            for c in optimization["checks"]
        ]
        metric = optimization["metric"]
        lines += [
            "",
            "| runtime | primary | ECE | worst drop | max gap | request p50 ms | examples/s | "
            "tokens/s | size MB |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for runtime in ["eager", *(c["runtime"] for c in optimization["checks"])]:
            row = optimization["metrics"][runtime]
            lines.append(
                f"| {runtime} | {num(row.get(metric))} | {num(row.get('ece'))} | "
                f"{num(row.get('worst_drop'))} | {num(row.get('max_gap'))} | "
                f"{num(row.get('request_ms_p50'), 2)} | {num(row.get('throughput_per_s'), 1)} | "
                f"{num(row.get('tokens_per_second'), 1)} | {num(row.get('model_size_mb'), 2)} |"
            )
    note = get_target(config.target).eager_only_note
    if kept and note:
        lines.append(f"\n{note}")
    return "\n".join(lines)


def model_card(
    config: PipelineConfig,
    staged: dict,
    decision: dict,
    winner: dict,
    dag_id: str,
    run_id: str,
    failed: list[dict] | None = None,
    links: dict[str, str] | None = None,
    evaluation: dict | None = None,
) -> str:
    """The version's description, in Markdown: what a reviewer reads before approving.

    ``links`` (optional): ``parent_run``, ``winner_run`` and ``validation_report`` addresses;
    ``evaluation`` (optional): the winner's evaluation outcome, for the model kind's section
    (a generative model's prompt format and sample answers).
    """
    links = links or {}
    kind_section = kind_of(config).card_section(config, evaluation)
    failures = (
        "\n".join(
            f"- {f['candidate']}: training job `{f['job_name']}` ended {f['status']}: "
            f"{f['reason'].splitlines()[0] if f['reason'] else 'no reason given'}"
            for f in failed or []
        )
        or "none"
    )

    def model(row: dict) -> str:
        return (
            row["candidate"]
            if row["role"] == "candidate"
            else f"{row['candidate']} ({row['role']})"
        )

    rows = "\n".join(
        f"| {model(r)} | {num(r['mean_win_rate'])} | {num(r['primary'])} | {num(r['ece'])} | "
        f"{num(r['worst_drop'])} | {num(r['max_gap'])} | {num(r['latency_p95_ms'], 1)} | "
        f"{num(r['usd_per_1k_requests'], 5)} |"
        for r in decision["leaderboard"]
    )
    reasons = "\n".join(f"- {reason}" for reason in decision.get("reasons", []))
    gate = decision.get("gate") or {}
    bounds = "\n".join(
        f"  - `{c['metric']}` {c['bound']}: {'passed' if c['passed'] else 'FAILED'} ({c['reason']})"
        for c in (gate.get("checks") or {}).get(winner["candidate"], [])
    )
    hosting, _ = hosting_recommendation(config, decision, winner["candidate"])
    validation = staged["validation"]
    review = (
        "`deployment.approval` is `auto` in this config: fmops_deploy approves this version "
        "without a human review and records that on the version."
        if config.deployment.approval == "auto"
        else f"fmops_deploy waits up to {config.deployment.approval_timeout_seconds} s for a "
        "decision."
    )
    lineage = [f"- pipeline `{config.pipeline}`, DAG run `{dag_id}` / `{run_id}`"]
    for key, label in (("parent_run", "MLflow run of the DAG run"), ("winner_run", "winner's run")):
        if links.get(key):
            lineage.append(f"- {label}: {links[key]}")
    validation_link = (
        f"; report: {links['validation_report']}" if links.get("validation_report") else ""
    )
    lineage_text = "\n".join(lineage)
    verdict = "promote" if decision.get("promote", True) else "do not promote"
    champion = (
        comparison_line(gate["champion"])
        if gate.get("champion")
        else "no champion is registered: the bounds alone decide"
    )
    return f"""# {config.registry.model_name}: {winner["candidate"]}

{lineage_text}

## Data
- training: `{config.data.train}` ({staged["train_rows"]} rows after sampling), validation:
  {staged["validation_rows"]} rows, evaluation: `{config.data.evaluation}`
  ({staged["evaluation_rows"]} rows), labels {_labels_source(config)}; staged data digest
  `{staged["digest"]}`
- dataset digests (sha256): train `{staged["train_data_digest"]}`,
  evaluation `{staged["evaluation_data_digest"]}`
- validation: {validation["expectations"]} expectations, {validation["failed"]} failed,
  {validation["warned"]} warning(s): {"; ".join(validation["problems"]) or "none"}{validation_link}

## Training
{_training_lines(config, winner)}

## Evaluation
Primary metric `{decision["metric"]}`; the mean win rate is over every scenario metric
(HELM); cost per 1,000 requests is an estimate (see the report).

{CARD_HEADER}
{rows}

### Gate decision
**{verdict} {winner["candidate"]}**: {decision["metric"]} = {decision["score"]:.4f}; gain over
the untuned baseline: {decision.get("gain_over_baseline", "n/a")}.
- bounds of the winner:
{bounds or "  - none configured"}
- against the champion: {champion}
- against the untuned baseline: {comparison_line(gate.get("baseline"))}

The gate's reasons:
{reasons}

Report: {decision.get("report_url", "n/a")}

Candidates that failed and were not compared:
{failures}
{chr(10) + kind_section + chr(10) if kind_section else ""}
## Serving artifact
{serving_lines(config, decision.get("optimization"))}

## Hosting
{hosting}

## Cost
{cost_lines(decision.get("costs"))}

## Known limits
{_known_limits(config, staged, decision, winner["candidate"])}

## Review
Approve or reject in Airflow: the `await_approval` task of the `fmops_deploy` run that this
version scheduled (the UI's required actions), or
`fmops approve|reject {config.registry.model_name} VERSION --comment TEXT` with an Airflow login.
The decision, who made it and the comment are recorded on this version's tags (`{APPROVAL_TAG}`:
`{APPROVED}` or `{REJECTED}`, `{REVIEWER_TAG}`, `{COMMENT_TAG}`); setting those tags by hand
decides nothing.
{review}
"""


MAX_DESCRIPTION = 5000  # MLflow's model_versions.description is VARCHAR(5000) on PostgreSQL/MySQL
CARD_ARTIFACT = "model_card.md"


# Which sections a description too long for MLflow leaves out first (titles' beginnings); any
# section not named here goes before them, and the card's title and lineage always stay.
DROP_FIRST = (
    "Sample answers",
    "Cost",
    "Hosting",
    "Prompt format",
    "Training",
    "Data",
    "Serving artifact",
    "Review",
    "Known limits",
    "Evaluation",
)


def fit_description(card: str, full_card_url: str) -> str:
    """The card as a version's description: whole when it fits MLflow's 5,000 characters, else
    without the sections a reviewer needs least (:data:`DROP_FIRST`), with a line naming them
    and where the whole card is.

    SQLite stores a longer description; PostgreSQL (the team stack, compose) refuses it, so the
    bound holds on every store. The gate's decision, the known limits and how to review stay
    longest; a card whose title and lineage alone are too long is cut at a line."""
    if len(card) <= MAX_DESCRIPTION:
        return card
    head, *sections = card.split("\n## ")

    def rank(section: str) -> int:
        title = section.split("\n", 1)[0]
        order = [i for i, name in enumerate(DROP_FIRST) if title.startswith(name)]
        return order[0] if order else -1  # a section not listed goes first

    def note(left_out: list[str]) -> str:
        titles = ", ".join(section.split("\n", 1)[0] for section in left_out)
        return (
            f"\n\n_Left out here (an MLflow description holds {MAX_DESCRIPTION:,} characters): "
            f"{titles}. The whole card is `{CARD_ARTIFACT}` on the winner's run: "
            f"{full_card_url}_\n"
        )

    kept = list(sections)
    for section in sorted(sections, key=rank):
        text = "\n## ".join([head, *kept]).rstrip()
        if len(text) + len(note([s for s in sections if s not in kept])) <= MAX_DESCRIPTION:
            break
        kept.remove(section)
    left_out = [s for s in sections if s not in kept]
    text = "\n## ".join([head, *kept]).rstrip()
    budget = MAX_DESCRIPTION - len(note(left_out))
    if len(text) > budget:
        text = text[:budget].rsplit("\n", 1)[0]
    return text + note(left_out)
