from kamus.cli import main

main()
