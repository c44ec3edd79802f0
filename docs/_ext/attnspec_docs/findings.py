"""The findings page: every failure in the committed reports, with its smallest input and command."""

from __future__ import annotations

from attnspec.clauses import SPEC_VERSION

from . import reports, rst


def _finding(f: reports.Finding) -> str:
    return (
        f"- {rst.clause_ref(f.clause)}, ``{f.test}`` ({', '.join(d for d in f.dtypes if d) or 'every dtype'}): "
        f"{rst.plain(f.summary)}\n\n"
        + (f"  Smallest input: ``{f.case}``\n\n" if f.case else "")
        + (f"  .. code-block:: bash\n\n     {f.reproduce}\n\n" if f.reproduce else "")
    )


def _report(r: reports.Report) -> str:
    found = reports.findings(r)
    if not found:
        return ""
    files = ", ".join(f"``docs/results/{name}``" for name in dict.fromkeys(r.files))
    title = f"``{r.backend}`` on {r.device}, {r.date}"
    return rst.heading(title, "~") + f"From {files}.\n\n" + "".join(_finding(f) for f in found)


def page(reports_: list[reports.Report]) -> str:
    third = "".join(_report(r) for r in reports_ if r.third_party)
    own = "".join(_report(r) for r in reports_ if not r.third_party)
    return (
        rst.heading("Findings", "=")
        + f"Spec version {SPEC_VERSION}. Every failed conformance test in the latest committed report of each "
        + "backend on each device (``docs/results/``), grouped by test; the smallest input is the one Hypothesis "
        + "shrank to, and the command reruns it from the repository root on a machine with that device.\n\n"
        + rst.heading("Third-party kernels", "-")
        + (third or "None.\n\n")
        + rst.heading("This project's backends", "-")
        + "A failure here is a bug of this project, fixed in a later commit where the report says so.\n\n"
        + (own or "None.\n\n")
    )
