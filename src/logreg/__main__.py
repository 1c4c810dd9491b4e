from logreg.launch import main

main()
