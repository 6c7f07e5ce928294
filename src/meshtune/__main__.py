from meshtune.cli import main

main()
