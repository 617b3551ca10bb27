"""One module per `splitkd` subcommand; each is a thin body over library code."""
