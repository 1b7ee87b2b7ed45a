"""Offline evaluation of the service's models: FMU-Agent's four dimensions, as the `eval` command."""
