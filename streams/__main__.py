from streams.cli import app

app(prog_name="python -m streams")
