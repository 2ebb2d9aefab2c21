from uid2_operator.cli import main

main()
