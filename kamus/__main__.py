from kamus.cli.main import main

main()
