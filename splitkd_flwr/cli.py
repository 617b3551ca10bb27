"""`splitkd`: the command-line entry point. It only wires subcommands (one module each)."""

import typer

from splitkd_flwr.commands import (
    audit,
    calibrate,
    case_study,
    plan,
    prepare,
    report,
    simulate,
)

app = typer.Typer(no_args_is_help=True, help="Split knowledge distillation on Flower.")

# Each subcommand lives in splitkd_flwr/commands/<name>.py; register it here, one line each.
app.command("audit")(audit.audit_command)
app.command()(calibrate.calibrate)
app.command("case-study")(case_study.case_study)
app.command()(plan.plan)
app.command()(prepare.prepare)
app.command()(simulate.simulate)
app.command()(report.report)

if __name__ == "__main__":
    app()
