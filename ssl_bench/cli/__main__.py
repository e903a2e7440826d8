from ssl_bench.cli import app

app()
