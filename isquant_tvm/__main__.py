from .cli import cli_entry

raise SystemExit(cli_entry())
