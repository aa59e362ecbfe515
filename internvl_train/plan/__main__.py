from internvl_train.plan.cli import main

main()
