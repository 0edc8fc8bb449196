from kmodel.cli import main

main()
