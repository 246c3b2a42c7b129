from aibuild.cli import main

main()
