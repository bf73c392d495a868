from meshns.cli.main import run

run()
