from tracerl.cli import main

main()
