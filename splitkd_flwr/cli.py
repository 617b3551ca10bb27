"""`splitkd`: the command-line entry point. It only wires subcommands (one module each)."""

import typer

app = typer.Typer(no_args_is_help=True, help="Split knowledge distillation on Flower.")

# Each subcommand lives in splitkd_flwr/commands/<name>.py; register it here, one line each.

if __name__ == "__main__":
    app()
