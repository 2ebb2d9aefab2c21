from uid2_operator.console_script import main

main()
