from meshns.cli.main import main

main()
