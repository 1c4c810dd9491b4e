from logreg.cli import main

main()
