"""The job kinds of cluster verify: "cluster.verify" (read only) and "cluster.fix" (one fix)."""
from __future__ import annotations

from hosts import verify, verify_collect, verify_networks
from hosts.fixes import FIXES, run_fix
from hosts.foreign import record_listings
from hosts.job_params import FixParams
from hosts.models import CpuServer, DiskServer
from jobs.choices import LogLevel
from jobs.runner import JobContext, JobFailed, Step, job_kind

# Findings go to the job's log at the level an operator should read them with.
LEVELS = {"critical": LogLevel.ERROR, "error": LogLevel.ERROR, "warning": LogLevel.WARNING}


def _note(ctx: JobContext) -> verify_collect.Note:
    return lambda message, level: ctx.log(message, level)


def _reality(ctx: JobContext) -> verify_collect.Reality:
    return ctx.data.setdefault("reality", verify_collect.Reality())


def collect_cpu_servers(ctx: JobContext) -> None:
    real = _reality(ctx)
    verify_collect.collect_domains(real, CpuServer.objects.all(), _note(ctx))
    record_listings(real.domains)  # what runs besides the panel's guests counts as used from now


def collect_disk_servers(ctx: JobContext) -> None:
    verify_collect.collect_disks(_reality(ctx), DiskServer.objects.all(), ctx.data["inventory"], _note(ctx))


def probe_san(ctx: JobContext) -> None:
    verify_collect.probe_san(_reality(ctx), CpuServer.objects.all(), _note(ctx))


def check_networks(ctx: JobContext) -> None:
    ctx.data["network_findings"] = [f.as_dict() for f in verify_networks.findings()]


def compare(ctx: JobContext) -> None:
    inventory = verify_collect.settle(ctx.data["inventory"], verify_collect.load_inventory())
    real = _reality(ctx)
    network = [verify.Finding.from_dict(f) for f in ctx.data.get("network_findings", [])]
    findings = verify.compare(inventory, real, network)
    # One entry per finding, its data the finding itself: the findings page renders them from here.
    for finding in findings:
        ctx.log(finding.line(), LEVELS[finding.severity], finding=finding.as_dict())
    checked = verify.checked_counts(inventory, real)
    ctx.data["result"] = verify.result_text(findings)
    ctx.log(f"cluster verify: {ctx.data['result']}", checked=checked,
            counts={s: sum(1 for f in findings if f.severity == s) for s in verify.SEVERITIES})


@job_kind("cluster.verify")
def plan_verify(ctx: JobContext) -> list[Step]:
    # Read before anything is asked, and again after (see verify_collect.settle).
    ctx.data["inventory"] = verify_collect.load_inventory()
    return [
        Step("Collect from the CPU servers", collect_cpu_servers),
        Step("Collect from the disk servers", collect_disk_servers),
        Step("Probe the SAN", probe_san),
        Step("Check the guests' networks", check_networks),
        Step("Compare", compare),
    ]


@job_kind("cluster.fix", params=FixParams)
def plan_fix(ctx: JobContext) -> list[Step]:
    params = FixParams.of(ctx.job)
    if params.fix not in FIXES:
        raise JobFailed(f"unknown fix {params.fix!r}")
    return [Step(params.label or params.fix, run_fix)]
