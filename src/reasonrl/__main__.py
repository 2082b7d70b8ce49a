from reasonrl.cli import run

run()
