from bootforge.cli.main import main

main()
