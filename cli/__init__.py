"""The `gensar` command (`cli.main:app`): the core's own commands (infra, data, replay) and
each part's sub-commands. It sits above every part; no part and nothing in the core imports it."""
