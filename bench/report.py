"""The bench's verdicts (issue 6's targets) and its Markdown tables, from a results dict."""

from __future__ import annotations

from typing import Any

SFT_SPEEDUP = 3.0  # tunelab tokens/s >= 3x TRL's best
SFT_EVAL_TOLERANCE = 0.02  # eval loss no more than 2% above TRL's packing-off run
CLASSIFY_SPEEDUP = 1.5  # examples/s >= 1.5x the Trainer's
ACCURACY_POINTS = 0.5  # dev accuracy no more than 0.5 points below the Trainer's
PLAN_TOLERANCE = 0.25  # `tunelab plan` estimate within 25% of the measured peak RSS
SMOLLM2_SPEEDUP = 2.0  # SmolLM2 LoRA: tokens/s >= 2x TRL + peft, at equal eval loss and no more memory


def evaluate_targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Each speed target against the peers at fp32 and at bf16=True (issue 11): whichever precision
    tunelab's auto picks on the machine, it is measured against a peer that could have picked it too."""
    targets: list[dict[str, Any]] = []
    for compute in ("fp32", "bf16"):
        targets += _sft_targets(results["sft"]["runs"], compute)
    targets += _sft_context(results["sft"]["runs"])
    for compute in ("fp32", "bf16"):
        targets += _classify_targets(results["classify"]["runs"], compute)
    if results.get("smollm2"):  # absent from results files written before the section existed
        targets += _smollm2_targets(results["smollm2"]["runs"])
    for name, check in (results.get("plan") or {}).items():
        targets.append(
            _target(
                f"plan estimate within 25% of measured peak RSS ({name.replace('_', ' ')})",
                f"{check['estimate_mb']:,.0f} MB",
                f"{check['measured_peak_rss_mb']:,.0f} MB",
                check["ratio"],
                abs(check["ratio"] - 1) <= PLAN_TOLERANCE,
                "x",
            )
        )
    return targets


def _peers(runs: dict[str, Any], framework: str, compute: str) -> dict[str, Any]:
    return {
        k: r for k, r in runs.items() if r["framework"] == framework and r.get("compute", "fp32") == compute
    }


def _sft_targets(sft: dict[str, Any], compute: str) -> list[dict[str, Any]]:
    peers = _peers(sft, "trl", compute)
    if not peers:
        return []
    best_name = max(peers, key=lambda k: peers[k]["tokens_per_s"])
    best, ours = peers[best_name], sft["tunelab_pack_on"]
    targets = [
        _target(
            f"SFT tokens/s >= 3x TRL's best ({compute} peers)",
            f"{ours['tokens_per_s']:,.0f} (packing on, {ours['compute']})",
            f"{best['tokens_per_s']:,.0f} ({_name(best_name, best)})",
            ours["tokens_per_s"] / best["tokens_per_s"],
            ours["tokens_per_s"] >= SFT_SPEEDUP * best["tokens_per_s"],
            "x",
        )
    ]
    reference_name = f"trl{'_bf16' if compute == 'bf16' else ''}_pack_off"
    reference = sft.get(reference_name)
    for name in ("tunelab_pack_off", "tunelab_pack_on"):
        what = f"SFT eval loss within 2% of TRL packing off, {compute} ({_name(name, sft[name])})"
        if reference is None or reference.get("probe"):
            targets.append(_not_comparable(what, "the peer ran a capped throughput probe"))
            continue
        loss = sft[name]["eval_loss"]
        targets.append(
            _target(what, f"{loss:.4f}", f"{reference['eval_loss']:.4f}", loss / reference["eval_loss"] - 1,
                    loss <= reference["eval_loss"] * (1 + SFT_EVAL_TOLERANCE), "%")
        )  # fmt: skip
    for packing in ("off", "on"):
        peer = sft.get(f"trl{'_bf16' if compute == 'bf16' else ''}_pack_{packing}")
        if peer is None:
            continue
        ours_rss, theirs_rss = sft[f"tunelab_pack_{packing}"]["peak_rss_mb"], peer["peak_rss_mb"]
        targets.append(
            _target(f"SFT peak RSS <= TRL's (packing {packing}, {compute} peer)", f"{ours_rss:,.0f} MB",
                    f"{theirs_rss:,.0f} MB", ours_rss / theirs_rss, ours_rss <= theirs_rss, "x")
        )  # fmt: skip
    return targets


def _sft_context(sft: dict[str, Any]) -> list[dict[str, Any]]:
    """Context rows, not the issue's targets: like against like. Packing at the same batch size halves
    the optimizer steps (more examples per row), so a packed run's loss is compared with the other
    packed run, and the unpacked speed with the other unpacked run."""
    same = sft["trl_pack_off"]
    ours = sft["tunelab_pack_off"]
    packed_loss, trl_packed_loss = sft["tunelab_pack_on"]["eval_loss"], sft["trl_pack_on"]["eval_loss"]
    return [
        _target("context: SFT tokens/s, packing off, vs TRL packing off (fp32)", f"{ours['tokens_per_s']:,.0f}",
                f"{same['tokens_per_s']:,.0f}", ours["tokens_per_s"] / same["tokens_per_s"],
                ours["tokens_per_s"] >= SFT_SPEEDUP * same["tokens_per_s"], "x"),
        _target("context: SFT eval loss, packing on, within 2% of TRL packing on (fp32, same steps)",
                f"{packed_loss:.4f}", f"{trl_packed_loss:.4f}", packed_loss / trl_packed_loss - 1,
                packed_loss <= trl_packed_loss * (1 + SFT_EVAL_TOLERANCE), "%"),
    ]  # fmt: skip


def _classify_targets(cls: dict[str, Any], compute: str) -> list[dict[str, Any]]:
    peers = _peers(cls, "transformers.Trainer", compute)
    if not peers:
        return []
    ours, (trainer,) = cls["tunelab"], peers.values()
    targets = [
        _target(
            f"classify examples/s >= 1.5x Trainer ({compute}{', probe' if trainer.get('probe') else ''})",
            f"{ours['examples_per_s']:,.1f} ({ours['compute']})",
            f"{trainer['examples_per_s']:,.1f}",
            ours["examples_per_s"] / trainer["examples_per_s"],
            ours["examples_per_s"] >= CLASSIFY_SPEEDUP * trainer["examples_per_s"],
            "x",
        )
    ]
    what = f"classify dev accuracy within 0.5 points of Trainer ({compute})"
    if trainer.get("probe"):
        return [*targets, _not_comparable(what, "the peer ran a capped throughput probe")]
    points = 100 * (ours["eval_accuracy"] - trainer["eval_accuracy"])
    targets.append(
        _target(what, f"{ours['eval_accuracy']:.4f}", f"{trainer['eval_accuracy']:.4f}", points,
                points >= -ACCURACY_POINTS, "pt")
    )  # fmt: skip
    return targets


def _smollm2_targets(runs: dict[str, Any]) -> list[dict[str, Any]]:
    """One target, three conditions: speed alone could be bought with memory or with worse training, so
    tokens/s counts only at equal eval loss (within the SFT tolerance) and no more peak RSS than TRL's
    fp32 run, the peer at tunelab's precision here. The bf16 peer is context: speed and memory only."""
    ours, peer = runs["tunelab_pack_off"], runs["trl_pack_off"]
    speed = ours["tokens_per_s"] / peer["tokens_per_s"]
    equal_loss = ours["eval_loss"] <= peer["eval_loss"] * (1 + SFT_EVAL_TOLERANCE)
    no_more_memory = ours["peak_rss_mb"] <= peer["peak_rss_mb"]

    def shown(r: dict[str, Any]) -> str:
        loss = "-" if r.get("probe") else f"{r['eval_loss']:.4f}"
        return f"{r['tokens_per_s']:,.0f} tok/s, eval loss {loss}, {r['peak_rss_mb']:,.0f} MB"

    targets = [
        _target("SmolLM2 LoRA: tokens/s >= 2x TRL at equal eval loss and no more memory (fp32 peer)",
                shown(ours), shown(peer), speed, speed >= SMOLLM2_SPEEDUP and equal_loss and no_more_memory,
                "x"),
    ]  # fmt: skip
    bf16 = runs.get("trl_bf16_pack_off")
    if bf16 is not None:
        ratio = ours["tokens_per_s"] / bf16["tokens_per_s"]
        targets.append(
            _target(f"context: SmolLM2 LoRA tokens/s vs {_name('trl_bf16_pack_off', bf16)}", shown(ours),
                    shown(bf16), ratio, ratio >= SMOLLM2_SPEEDUP and ours["peak_rss_mb"] <= bf16["peak_rss_mb"],
                    "x")
        )  # fmt: skip
    return targets


def _not_comparable(what: str, why: str) -> dict[str, Any]:
    return {"target": what, "tunelab": "-", "reference": "-", "ratio": "-", "met": None, "why": why}


def _target(what: str, ours: str, theirs: str, ratio: float, met: bool, unit: str) -> dict[str, Any]:
    shown = {"x": f"{ratio:.2f}x", "%": f"{100 * ratio:+.1f}%", "pt": f"{ratio:+.1f} pt"}[unit]
    return {"target": what, "tunelab": ours, "reference": theirs, "ratio": shown, "met": met}


def _name(key: str, run: dict[str, Any] | None = None) -> str:
    framework, _, packing = key.partition("_pack_")
    framework = {
        "tunelab": "tunelab",
        "trl": "TRL SFTTrainer",
        "trl_bf16": "TRL SFTTrainer bf16=True",
        "trainer": "transformers.Trainer",
        "trainer_bf16": "transformers.Trainer bf16=True",
    }.get(framework, framework)
    name = f"{framework}, packing {packing}" if packing else framework
    if run is not None and run.get("probe"):
        name += f" (probe: {run['steps']} steps)"
    return name


def _mb(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f}"


def _load(r: dict[str, Any]) -> str:
    load = r.get("load_average_start_end")
    return f"{load[0]:.1f}→{load[1]:.1f}" if load else "-"


def _f(value: float | None, digits: int = 4) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def sft_table(results: dict[str, Any], section: str = "sft") -> list[str]:
    runs = results[section]["runs"]  # the smollm2 section's runs have the sft section's keys and fields
    cuda = any(r.get("peak_cuda_mb") for r in runs.values())
    head = "| run | compute | steps | non-pad tokens | loop s | tokens/s | MFU | peak RSS MB |"
    head += " peak CUDA MB |" if cuda else ""
    head += " final train loss | eval loss | load start→end |"
    lines = [head, "|" + " --- |" * (head.count("|") - 1)]
    for key, r in runs.items():
        row = (
            f"| {_name(key, r)} | {r.get('compute', 'fp32')} | {r['steps']} | {r['tokens']:,} | {r['loop_s']:.1f} "
            f"| {r['tokens_per_s']:,.0f} "
            f"| {100 * r['mfu']:.1f}% | {_mb(r['peak_rss_mb'])} |"
        )
        row += f" {_mb(r.get('peak_cuda_mb'))} |" if cuda else ""
        shown_eval = "-" if r.get("probe") else _f(r["eval_loss"])  # a probe's weights saw a few steps
        row += f" {_f(r['train_loss'])} | {shown_eval} | {_load(r)} |"
        lines.append(row)
    return lines


def classify_table(results: dict[str, Any]) -> list[str]:
    runs = results["classify"]["runs"]
    cuda = any(r.get("peak_cuda_mb") for r in runs.values())
    head = "| run | compute | steps | examples | loop s | examples/s | tokens/s | MFU | peak RSS MB |"
    head += " peak CUDA MB |" if cuda else ""
    head += " final train loss | dev loss | dev accuracy | load start→end |"
    lines = [head, "|" + " --- |" * (head.count("|") - 1)]
    for key, r in runs.items():
        row = (
            f"| {_name(key, r)} | {r.get('compute', 'fp32')} | {r['steps']} | {r['examples']:,} | {r['loop_s']:.1f} | {r['examples_per_s']:,.1f} "
            f"| {r['tokens_per_s']:,.0f} | {100 * r['mfu']:.2f}% | {_mb(r['peak_rss_mb'])} |"
        )
        row += f" {_mb(r.get('peak_cuda_mb'))} |" if cuda else ""
        if r.get("probe"):
            row += f" {_f(r['train_loss'])} | - | - | {_load(r)} |"
        else:
            row += f" {_f(r['train_loss'])} | {_f(r['eval_loss'])} | {_f(r['eval_accuracy'])} | {_load(r)} |"
        lines.append(row)
    return lines


def smollm2_lines(results: dict[str, Any]) -> list[str]:
    """The smollm2 section's heading and table, then a blank line; nothing for older results files."""
    section = results.get("smollm2")
    if not section:
        return []
    s = section["settings"]
    same = s.get("loss_tokens_identical") or {}
    heading = (
        f"SmolLM2 LoRA SFT ({s['model']}; {s['method']}, modules {', '.join(s['target_modules'])}; "
        f"{s['data']}; max_len {s['max_len']}, batch {s['batch']}, lr {s['lr']}; TRL through peft; "
        f"loss tokens identical: {same.get('identical', '-')}):"
    )
    return [heading, "", *sft_table(results, "smollm2"), ""]


def targets_table(results: dict[str, Any]) -> list[str]:
    lines = ["| target | tunelab | reference | ratio | met |", "| --- | --- | --- | --- | --- |"]
    for t in results["targets"]:
        lines.append(f"| {t['target']} | {t['tunelab']} | {t['reference']} | {t['ratio']} | {_met(t)} |")
    return lines


def _met(target: dict[str, Any]) -> str:
    if target["met"] is None:
        return f"n/a: {target.get('why', 'not comparable')}"
    return "yes" if target["met"] else "**no**"


def profile_lines(results: dict[str, Any]) -> list[str]:
    p = results["profile"]
    phases = ", ".join(f"{k} {v:.0f} ms" for k, v in p["phase_ms_per_step"].items())
    lines = [
        f"tunelab SFT loop (packing {'on' if p['packing'] else 'off'}), {p['steps_profiled']} steps under "
        f"torch.profiler: {p['ms_per_step']:.0f} ms of CPU op time per step; phases per step: {phases}.",
        "",
        "| op | self ms / step | share | calls / step |",
        "| --- | --- | --- | --- |",
    ]
    lines += [
        f"| `{o['op']}` | {o['self_ms_per_step']:.1f} | {100 * o['share']:.1f}% | {o['calls_per_step']:g} |"
        for o in p["top_ops"]
    ]
    return lines


def peaks_line(results: dict[str, Any]) -> str:
    peaks = results["peaks"]
    return (
        f"Matmul peak: fp32 {1000 * peaks['fp32']['tflops']:.0f} GFLOP/s ({peaks['fp32']['size']}² matmul, best of "
        f"{peaks['fp32']['reps']}{_start_end(peaks['fp32'])}); bf16 {1000 * peaks['bf16']['tflops']:.1f} GFLOP/s ({peaks['bf16_note']}). "
        "MFU = 6·N·tokens/s ÷ the peak of the run's compute dtype (bf16 autocast: the bf16 peak); N counts nn.Linear weights "
        f"(output projection yes, embedding lookup no): SFT N = {_n(results, 'sft')}, classify N = {_n(results, 'classify')}"
        + (f", SmolLM2 N = {_n(results, 'smollm2')} (the frozen base's layers too: 6N overstates a LoRA step's work, "
           "alike for both frameworks)." if results.get("smollm2") else ".")
    )  # fmt: skip


def _start_end(peak: dict[str, Any]) -> str:
    if "tflops_end" not in peak:
        return ""
    return f"; better of {1000 * peak['tflops_start']:.0f} at the start and {1000 * peak['tflops_end']:.0f} at the end"


def _n(results: dict[str, Any], bench: str) -> str:
    first = next(iter(results[bench]["runs"].values()))
    return f"{first['matmul_params'] / 1e6:.2f}M"


def data_line(results: dict[str, Any]) -> str:
    d = results.get("data")
    if not d:
        return "Data bench: skipped (--quick)."
    return (
        f"Data stage (bench/data_sst2.py, {d['rows']:,} SST-2 rows, 1 repeat): inspect end to end "
        f"{d['inspect_total_s']:.1f} s (target < 60 s); load {d['load_s']:.1f} s, exact dedup {d['exact_s']:.1f} s, "
        f"near dedup {d['near_s']:.1f} s."
    )


def _git(results: dict[str, Any]) -> str:
    git = results.get("git")
    if not git:
        return ""
    return f" (commit {git['commit'][:7]}{', src/ with uncommitted changes' if git['src_changed'] else ''})"


def markdown_table(results: dict[str, Any]) -> str:
    m = results["machine"]
    parts = [
        f"Machine `{m['name']}` ({m['cpu']}, {m['cores']} cores, {m['memory_gb']} GB; CPU flags "
        f"{', '.join(m.get('cpu_flags', [])) or '-'}; load average at start "
        f"{m['load_average_at_start']}, at end {m.get('load_average_at_end', '-')}), {results['date']}; "
        + ", ".join(f"{k} {v}" for k, v in results["versions"].items())
        + _git(results),
        "",
        peaks_line(results),
        "",
        f"SFT ({results['sft']['settings']['data']}):",
        "",
        *sft_table(results),
        "",
        f"Classify ({results['classify']['settings']['data']}):",
        "",
        *classify_table(results),
        "",
        *smollm2_lines(results),
        "Targets:",
        "",
        *targets_table(results),
        "",
        data_line(results),
        "",
        *profile_lines(results),
    ]
    return "\n".join(parts)
