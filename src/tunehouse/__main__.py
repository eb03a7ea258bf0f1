from tunehouse.cli import app

app(prog_name="tunehouse")
